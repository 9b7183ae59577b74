"""nosd on a real two-node Ray cluster on this machine: replicas of one model on both nodes; the second node dies
and nosd keeps serving from the first.

Both nodes are real `ray start` processes (GCS, raylets, workers) with their own resources, token auth on.
Ray replaces 127.0.0.1 by the host's own address for multi-node clusters, so the nodes talk over this host's
address; nothing leaves the machine.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from conftest import start_daemon
from nosclient import AsyncClient, Client, NosdError
from nosd.testing import free_port

RAY = str(Path(sys.executable).parent / "ray")


class Node:
    def __init__(self, args: list[str], env: dict[str, str], log: Path):
        # --block keeps `ray start` in the foreground: the node's processes share its session, so killing
        # the session kills the node (and never another Ray on this machine, as `ray stop` would).
        self.proc = subprocess.Popen(
            [RAY, "start", "--block", "--disable-usage-stats", *args],
            env=env,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        out = subprocess.run(["ps", "-eo", "pid=,sid="], capture_output=True, text=True).stdout
        for pid, sid in (line.split() for line in out.splitlines()):
            if int(sid) == self.proc.pid:
                os.kill(int(pid), signal.SIGKILL)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[str, dict[str, str], Node]]:
    port = free_port()
    temp = tempfile.mkdtemp(prefix="nosdray", dir="/tmp")  # short: Ray's unix socket paths must fit 107 bytes
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "RAY_health_check_period_ms": "500",  # notice a dead node in ~2 s, not 15
        "RAY_health_check_failure_threshold": "4",
    }
    head = Node(
        [
            *("--head", f"--port={port}", "--num-cpus=2", '--resources={"head": 1}', "--include-dashboard=false"),
            *("--node-ip-address=127.0.0.1", f"--temp-dir={temp}"),
        ],
        env,
        tmp_path / "head.log",
    )
    nodes = [head]
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and head.proc.poll() is None, (tmp_path / "head.log").read_text()
                time.sleep(0.3)
        second = Node(
            [f"--address=127.0.0.1:{port}", "--num-cpus=2", '--resources={"second": 1}'],
            env,
            tmp_path / "second.log",
        )
        nodes.append(second)
        yield f"127.0.0.1:{port}", env, second
    finally:
        for node in reversed(nodes):
            node.kill()
        shutil.rmtree(temp, ignore_errors=True)


def _alive_nodes(address: str, env: dict[str, str]) -> int:
    code = (
        f"import ray; ray.init(address='{address}', logging_level='ERROR'); print(sum(n['Alive'] for n in ray.nodes()))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    return int(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_replicas_on_two_nodes_and_serving_survives_losing_one(cluster, tmp_path: Path) -> None:
    address, env, second = cluster
    deadline = time.monotonic() + 60
    while _alive_nodes(address, env) < 2:
        assert time.monotonic() < deadline, "the second node never joined"
        time.sleep(1)
    d = start_daemon(tmp_path, "--ray-address", address, env={k: env[k] for k in env if k.startswith("RAY_")})
    try:
        with Client(d.url) as c:
            state = c.load("custom/waiter", replicas=2)["state"]
            assert state["replicas"] == 2 and len(set(state["nodes"])) == 2, state  # one replica per node
            pids = {int(c.infer("custom/waiter", {"ms": np.array([1], np.float32)})["pid"][0]) for _ in range(20)}
            assert len(pids) == 2  # both replicas serve

        async def load(seconds: float) -> tuple[int, list[int]]:
            ok, failures = 0, []
            stop = time.monotonic() + seconds
            async with AsyncClient(d.url, retries=10, backoff_s=0.2) as ac:

                async def worker() -> None:
                    nonlocal ok
                    while time.monotonic() < stop:
                        try:
                            await ac.infer("custom/waiter", {"ms": np.array([5], np.float32)})
                            ok += 1
                        except NosdError as e:
                            failures.append(e.status)

                await asyncio.gather(*(worker() for _ in range(4)))
            return ok, failures

        async def kill_then_load() -> tuple[int, list[int]]:
            task = asyncio.create_task(load(10.0))
            await asyncio.sleep(2.0)
            second.kill()  # the whole node: raylet, object store, its workers
            return await task

        ok, failures = asyncio.run(kill_then_load())
        assert failures == [] and ok > 40, (ok, failures)  # a floor against a stall, not a speed claim
        assert _alive_nodes(address, env) == 1
        with Client(d.url) as c:
            state = c.metadata("custom/waiter")["state"]
            assert state["replicas"] == 2 and len(set(state["nodes"])) == 1, (state, d.log.read_text()[-4000:])
            assert c.infer("custom/waiter", {"ms": np.array([1], np.float32)})["calls"][0] >= 1
    finally:
        assert d.stop() == 0, d.log.read_text()[-3000:]
