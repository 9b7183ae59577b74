#!/usr/bin/env bash
# Create .venv and install nosd (server + client + test tools). Idempotent: a second run only checks.
# --test also installs Debian's chromium (headless, for the status-page test) when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--test" ] && ! command -v chromium >/dev/null; then
  SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
  $SUDO apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends chromium >/dev/null
fi
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# torch==2.14.1/torchvision==0.29.1 are pinned in pyproject.toml; pip takes them from the local wheel cache here.
.venv/bin/python -m pip install --quiet -e ".[test,bench]"
.venv/bin/python -c "import nosd, nosclient, torch, torchvision, ray; print('nosd ready: torch', torch.__version__, 'ray', ray.__version__)"
