"""nosclient's same-host transport: shared memory for tensors, regions pooled, nothing left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from conftest import start_daemon
from nosclient import Client


def _status(daemon) -> set[str]:
    return {r["name"] for r in httpx.get(daemon.url + "/v2/systemsharedmemory/status").json()}


def _mine(client: Client) -> list[str]:
    prefix = client._pool._prefix
    return [p.name for p in Path("/dev/shm").glob(prefix + "*")]


@pytest.mark.parametrize("dtype", [np.uint8, np.float16, np.float32])
def test_shm_round_trips_equal_http(daemon, dtype) -> None:
    rng = np.random.default_rng(7)
    with Client(daemon.url, transport="shm") as s, Client(daemon.url) as h:
        for shape in [(1, 3), (4, 64, 64, 3), (2, 3000)]:
            x = (rng.random(shape) * 200).astype(dtype)
            ys, yh = s.infer("nosd/identity", {"x": x})["y"], h.infer("nosd/identity", {"x": x})["y"]
            assert ys.dtype == x.dtype
            np.testing.assert_array_equal(ys, x)
            np.testing.assert_array_equal(ys, yh)


def test_resnet18_over_client_shm_equals_http(daemon) -> None:
    images = np.random.default_rng(8).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    with Client(daemon.url, transport="shm") as s, Client(daemon.url) as h:
        a, b = s.infer("torchvision/resnet18", {"images": images}), h.infer("torchvision/resnet18", {"images": images})
    np.testing.assert_allclose(a["logits"], b["logits"], rtol=1e-5, atol=1e-5)
    assert a["label"].tolist() == b["label"].tolist()  # BYTES came back in the body


def test_regions_are_pooled_and_registered_once(daemon) -> None:
    with Client(daemon.url, transport="shm") as c:
        x = np.ones((2, 100), np.float32)
        c.infer("nosd/identity", {"x": x})
        before = set(_status(daemon))
        for _ in range(20):
            c.infer("nosd/identity", {"x": x})
        assert _status(daemon) == before and len(c._pool.all) == 2  # one input and one output region
        mine = _mine(c)
        assert mine and all((Path("/dev/shm") / m).stat().st_mode & 0o777 == 0o600 for m in mine)
    assert _mine(c) == [] and not {m for m in before if m.startswith(c._pool._prefix)} & _status(daemon)


def test_auto_uses_shm_on_the_same_host(daemon) -> None:
    with Client(daemon.url, transport="auto") as c:
        assert c.transport == "shm"
        np.testing.assert_array_equal(c.infer("nosd/identity", {"x": np.arange(5)[None]})["y"], np.arange(5)[None])


def test_concurrent_clients_with_their_own_regions(daemon) -> None:
    errors: list[BaseException] = []

    def run(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            with Client(daemon.url, transport="shm") as c:
                for _ in range(15):
                    x = rng.standard_normal((1 + seed % 3, 2048)).astype(np.float32)
                    np.testing.assert_array_equal(c.infer("nosd/identity", {"x": x})["y"], x)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_a_sigkilled_client_leaves_no_segment_and_no_registration(daemon) -> None:
    code = textwrap.dedent(f"""
        import sys, time, numpy as np
        from nosclient import Client
        c = Client({daemon.url!r}, transport="shm")
        c.infer("nosd/identity", {{"x": np.ones((1, 4096), np.float32)}})
        print(c._pool._prefix, flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    prefix = proc.stdout.readline().strip()
    assert prefix.startswith("nosd_") and list(Path("/dev/shm").glob(prefix + "*"))
    assert any(n.startswith(prefix) for n in _status(daemon))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if not list(Path("/dev/shm").glob(prefix + "*")) and not any(n.startswith(prefix) for n in _status(daemon)):
            break
        time.sleep(0.2)
    assert not list(Path("/dev/shm").glob(prefix + "*")), "segments outlived the killed client"
    assert not any(n.startswith(prefix) for n in _status(daemon)), "the server kept the dead client's regions"


def test_no_shm_flag_disables_the_extension_and_auto_falls_back(tmp_path) -> None:
    d = start_daemon(tmp_path, "--no-shm", "--models", "nosd/identity")
    try:
        assert "system_shared_memory" not in httpx.get(d.url + "/v2").json()["extensions"]
        r = httpx.post(d.url + "/v2/systemsharedmemory/region/a/register", json={"key": "/a", "byte_size": 4})
        assert r.status_code == 400 and "--no-shm" in r.json()["error"]
        with Client(d.url, transport="auto") as c:
            assert c.transport == "http"
            assert c.infer("nosd/identity", {"x": np.ones((1, 2), np.int8)})["y"].tolist() == [[1, 1]]
            assert c._pool is None and not list(Path("/dev/shm").glob(f"nosd_{os.getpid()}_*"))
    finally:
        assert d.stop() == 0


def test_zero_copy_outputs_are_read_only_views_valid_until_the_next_call(daemon) -> None:
    with Client(daemon.url, transport="shm") as c:
        x = np.arange(4096, dtype=np.float32)[None]
        y = c.infer("nosd/identity", {"x": x}, zero_copy=True)["y"]
        np.testing.assert_array_equal(y, x)
        assert not y.flags.writeable and not y.flags.owndata
        held = len(c._pool.all)
        z = c.infer("nosd/identity", {"x": x + 1}, zero_copy=True)["y"]
        np.testing.assert_array_equal(z, x + 1)
        assert len(c._pool.all) == held, "the previous call's output region was reused, not a new one made"
        del y, z
