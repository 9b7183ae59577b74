"""One place that starts and stops daemons for tests: a real `nosd` process on a free 127.0.0.1 port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
CUSTOM = Path(__file__).resolve().parent / "custom_models.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Daemon:
    url: str
    proc: subprocess.Popen
    log: Path

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Signal the daemon and wait; kill its whole process group if it does not exit in time."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def descendants_alive(self) -> list[str]:
        """Processes still carrying this daemon's Ray session (raylet, gcs, workers)."""
        out = subprocess.run(["pgrep", "-af", f"session_.*_{self.proc.pid}"], capture_output=True, text=True).stdout
        return [line for line in out.splitlines() if "pgrep" not in line]


def start_daemon(tmp: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 120) -> Daemon:
    port = free_port()
    log = tmp / f"nosd-{port}.log"
    cmd = [sys.executable, "-m", "nosd.cli", "--port", str(port), "--model-module", str(CUSTOM), *args]
    full_env = {**os.environ, "NOSD_OFFLINE": "1", **(env or {})}
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=full_env,
                            start_new_session=True, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"nosd exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(url + "/v2/health/ready", timeout=1).status_code == 200:
                return Daemon(url, proc, log)
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    Daemon(url, proc, log).stop(signal.SIGKILL)
    raise RuntimeError(f"nosd not ready after {timeout}s:\n{log.read_text()}")


@pytest.fixture(scope="session")
def torch_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TORCH_HOME whose checkpoints hold seeded random weights under torchvision's own file names."""
    import torch
    import torchvision

    home = tmp_path_factory.mktemp("torch_home")
    ckpt = home / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    for arch, extra in (("resnet18", {}), ("fasterrcnn_mobilenet_v3_large_320_fpn", {"weights_backbone": None})):
        torch.manual_seed(0)
        weights = torchvision.models.get_model_weights(arch).DEFAULT
        model = torchvision.models.get_model(arch, weights=None, **extra)
        torch.save(model.state_dict(), ckpt / os.path.basename(weights.url))
    return home


@pytest.fixture(scope="session")
def daemon(tmp_path_factory: pytest.TempPathFactory, torch_home: Path) -> Iterator[Daemon]:
    """The shared daemon of the test run: embedded Ray, identity preloaded, others loaded on demand."""
    d = start_daemon(tmp_path_factory.mktemp("daemon"), "--models", "nosd/identity", "--max-body-mb", "8",
                     env={"TORCH_HOME": str(torch_home)})
    yield d
    code = d.stop()
    assert code == 0, d.log.read_text()[-3000:]
