#!/usr/bin/env bash
# Create .venv and install nosd (server + client + test tools). Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# torch==2.14.1/torchvision==0.29.1 are pinned in pyproject.toml; pip takes them from the local wheel cache here.
.venv/bin/python -m pip install --quiet -e ".[test,bench]"
.venv/bin/python -c "import nosd, nosclient, torch, torchvision, ray; print('nosd ready: torch', torch.__version__, 'ray', ray.__version__)"
