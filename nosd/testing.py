"""Start and stop real ``nosd`` daemons on free 127.0.0.1 ports: the one process helper of tests and benchmarks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


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
        """Signal the daemon and wait; then SIGKILL anything of its session still alive (a safety net
        for a failing test: the shutdown test asserts nothing was left before this runs)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            for pid in self.leftovers():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def leftovers(self) -> list[int]:
        """Processes of the daemon's session (it runs in its own: Ray's gcs, raylet, agents and workers)."""
        out = subprocess.run(["ps", "-eo", "pid=,sid="], capture_output=True, text=True).stdout
        rows = (line.split() for line in out.splitlines())
        return [int(pid) for pid, sid in rows if int(sid) == self.proc.pid and int(pid) != self.proc.pid]


def start_daemon(tmp: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 120) -> Daemon:
    """Run ``python -m nosd.cli ARGS`` in its own session, log to TMP, return once /v2/health/ready is 200."""
    port = free_port()
    log = tmp / f"nosd-{port}.log"
    cmd = [sys.executable, "-m", "nosd.cli", "--port", str(port), *args]
    full_env = {**os.environ, "NOSD_OFFLINE": "1", **(env or {})}
    proc = subprocess.Popen(
        cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=full_env, start_new_session=True, cwd=ROOT
    )
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
