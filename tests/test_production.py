"""One daemon as production runs it: bounded queues, deadlines, bearer auth, JSON logs, metrics, a status page."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from conftest import Daemon, start_daemon
from nosclient import AsyncClient, Client, NosdError
from nosclient.codec import MSGPACK, dumps

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def prod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    tmp = tmp_path_factory.mktemp("prod")
    d = start_daemon(
        tmp,
        *("--models", "nosd/identity,custom/waiter", "--max-queue-size", "4", "--max-elements", "1000000"),
        *("--auth-token", TOKEN, "--log-format", "json", "--ray-cpus", "2"),
    )
    yield d
    assert d.stop() == 0, d.log.read_text()[-3000:]


def waiter(ms: float) -> dict[str, np.ndarray]:
    return {"ms": np.array([ms], np.float32)}


def test_auth_guards_every_route_but_health(prod) -> None:
    for path in ("/v2/health/live", "/v2/health/ready"):
        assert httpx.get(prod.url + path).status_code == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        for method, path in (("GET", "/v2/models"), ("GET", "/metrics"), ("POST", "/v2/models/nosd/identity/infer")):
            r = httpx.request(method, prod.url + path, headers=headers, content=b"{}")
            assert r.status_code == 401, (path, headers)
            assert r.headers["WWW-Authenticate"] == "Bearer" and "Authorization: Bearer" in r.json()["error"]
    with Client(prod.url, token=TOKEN) as c:
        assert c.infer("nosd/identity", {"x": np.ones((1, 3), np.float32)})["y"].tolist() == [[1, 1, 1]]
    with Client(prod.url) as c, pytest.raises(NosdError) as e:
        c.infer("nosd/identity", {"x": np.ones((1, 3), np.float32)})
    assert e.value.status == 401


def test_requests_beyond_the_queue_limit_get_503_with_retry_after_at_once(prod) -> None:
    async def one(c: AsyncClient) -> tuple[int, float, str | None]:
        t0 = time.perf_counter()
        body = dumps({"inputs": [{"name": "ms", "datatype": "FP32", "shape": [1], "data": [1000.0]}]}, MSGPACK)
        r = await c._request(("POST", "/v2/models/custom/waiter/infer", body))
        return r.status_code, time.perf_counter() - t0, r.headers.get("Retry-After")

    async def burst() -> list[tuple[int, float, str | None]]:
        async with AsyncClient(prod.url, token=TOKEN) as c:
            return await asyncio.gather(*(one(c) for _ in range(16)))

    results = asyncio.run(burst())
    ok = [r for r in results if r[0] == 200]
    refused = [r for r in results if r[0] == 503]
    assert len(ok) + len(refused) == 16, results
    # 2 batches in flight on the one replica + 4 queued are admitted; the rest are refused.
    assert 4 <= len(ok) <= 8 and len(refused) >= 8, results
    assert all(int(r[2]) >= 1 for r in refused)
    assert max(r[1] for r in refused) < min(r[1] for r in ok), "a refusal must come at once, not after a wait"


def test_a_deadline_that_passes_in_the_queue_is_a_504_and_never_runs(prod) -> None:
    with Client(prod.url, token=TOKEN) as c:
        with pytest.raises(NosdError) as e:
            c.infer("custom/waiter", waiter(0), timeout_ms=-5)
        assert e.value.status == 400 and "timeout_ms" in e.value.message

        before = int(c.infer("custom/waiter", waiter(0))["calls"][0])
        slow = threading.Thread(target=lambda: Client(prod.url, token=TOKEN).infer("custom/waiter", waiter(3000)))
        fill = threading.Thread(target=lambda: Client(prod.url, token=TOKEN).infer("custom/waiter", waiter(3000)))
        slow.start(), fill.start()
        time.sleep(0.5)  # both dispatched (2 in flight): the next one waits in the queue
        with pytest.raises(NosdError) as e:
            c.infer("custom/waiter", waiter(0), timeout_ms=100)
        assert e.value.status == 504 and "was not run" in e.value.message
        # An ordering, not a timing: the 504 came while both 3 s requests still held the replica.
        assert slow.is_alive() and fill.is_alive(), "the 504 comes when the deadline passes, not when the queue moves"
        slow.join(), fill.join()
        after = int(c.infer("custom/waiter", waiter(0))["calls"][0])
        assert after == before + 3  # the two slow ones and this one: the expired request never ran


def test_a_client_that_disconnects_has_its_queued_request_dropped(prod) -> None:
    with Client(prod.url, token=TOKEN) as c:
        before = int(c.infer("custom/waiter", waiter(0))["calls"][0])
        busy = [
            threading.Thread(target=lambda: Client(prod.url, token=TOKEN).infer("custom/waiter", waiter(800)))
            for _ in range(2)
        ]
        for t in busy:
            t.start()
        time.sleep(0.2)
        with pytest.raises(httpx.ReadTimeout):  # gives up while queued: the connection closes
            with Client(prod.url, token=TOKEN, timeout=0.2) as quitter:
                quitter.infer("custom/waiter", waiter(0))
        for t in busy:
            t.join()
        after = int(c.infer("custom/waiter", waiter(0))["calls"][0])
        assert after == before + 3, "the disconnected client's request must not run"
        metrics = httpx.get(prod.url + "/metrics", headers=AUTH).text
        assert re.search(r'nosd_inference_requests_total\{model="custom/waiter",status="499"\} [1-9]', metrics)


def test_metrics_in_prometheus_format(prod) -> None:
    with Client(prod.url, token=TOKEN) as c:
        for _ in range(5):
            c.infer("nosd/identity", {"x": np.ones((2, 3), np.float32)})
    r = httpx.get(prod.url + "/metrics", headers=AUTH)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text

    def value(pattern: str) -> float:
        m = re.search(pattern + r" ([0-9.e+]+)", text)
        assert m, pattern
        return float(m.group(1))

    assert value(r'nosd_inference_requests_total\{model="nosd/identity",status="200"\}') >= 5
    assert value(r'nosd_inference_samples_total\{model="nosd/identity"\}') >= 10
    assert value(r'nosd_inference_request_duration_seconds_count\{model="nosd/identity"\}') >= 5
    assert value(r'nosd_inference_queue_duration_seconds_count\{model="nosd/identity"\}') >= 5
    assert value(r'nosd_inference_compute_duration_seconds_bucket\{le="\+Inf",model="nosd/identity"\}') >= 5
    assert value(r'nosd_inference_batch_size_count\{model="nosd/identity"\}') >= 1
    assert value(r'nosd_model_replicas\{model="nosd/identity"\}') == 1
    assert value(r'nosd_inference_queue_depth\{model="custom/waiter"\}') == 0
    assert value("nosd_models_loaded") == 2
    assert value(r'nosd_memory_total_bytes\{device="cpu"\}') > 1e9
    assert value("nosd_shm_regions") == 0
    httpx.post(prod.url + "/v2/models/no/such-model-123/infer", json={}, headers=AUTH)
    text = httpx.get(prod.url + "/metrics", headers=AUTH).text
    assert "no/such-model-123" not in text, "a client must not be able to create label values"
    assert re.search(r'nosd_inference_requests_total\{model="_unknown",status="404"\} [1-9]', text)


def test_bad_names_and_oversized_inputs_are_clear_400s(prod) -> None:
    with Client(prod.url, token=TOKEN) as c:
        with pytest.raises(NosdError) as e:
            c.infer("..%2Fetc", {"x": np.ones((1, 3), np.float32)})
        assert e.value.status == 400 and "is not valid" in e.value.message
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2_000_000], "data": [0.0]}]}
    r = httpx.post(prod.url + "/v2/models/nosd/identity/infer", json=body, headers=AUTH)
    assert r.status_code == 400 and "over this server's limit of 1000000" in r.json()["error"]


def test_json_logs_carry_the_request_id(prod) -> None:
    r = httpx.post(
        prod.url + "/v2/models/nosd/identity/infer",
        json={"inputs": []},
        headers={**AUTH, "X-Request-ID": "trace-me-42"},
    )
    assert r.status_code == 400 and r.headers["X-Request-ID"] == "trace-me-42"
    time.sleep(0.2)
    lines = [line for line in prod.log.read_text().splitlines() if line.startswith("{")]
    records = [json.loads(line) for line in lines]
    assert {"ts", "level", "logger", "message", "request_id"} <= set(records[0])
    mine = [r for r in records if r["request_id"] == "trace-me-42"]
    assert mine and "-> 400" in mine[0]["message"]


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_status_page_renders_the_loaded_models_in_headless_chromium(prod, tmp_path) -> None:
    with Client(prod.url, token=TOKEN) as c:
        c.infer("nosd/identity", {"x": np.ones((1, 3), np.float32)})
    cmd = [
        "chromium",
        *("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"),
        *("--disable-background-networking", "--disable-component-update", "--disable-sync"),
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=5000",  # let the page's script fetch and render
        "--dump-dom",
        f"{prod.url}/#token={TOKEN}",
    ]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=90, start_new_session=True).stdout
    assert 'data-model="nosd/identity"' in dom, dom[-2000:]
    row = re.search(r'<tr data-model="nosd/identity">(.*?)</tr>', dom, re.S).group(1)
    assert '<td class="ready">ready</td>' in row
    assert "models" in dom and "MB budget" in dom


def test_a_killed_worker_under_steady_load_loses_no_request(prod) -> None:
    """SIGKILL the worker while clients send continuously: with retries every request succeeds; without,
    each failure is a retryable 503; the replica comes back and throughput recovers."""

    async def load(seconds: float, retries: int) -> tuple[list[float], list[int], list[int]]:
        done_at: list[float] = []
        failures: list[int] = []
        pids: list[int] = []
        stop = time.monotonic() + seconds
        async with AsyncClient(prod.url, token=TOKEN, retries=retries, backoff_s=0.2) as c:

            async def worker() -> None:
                while time.monotonic() < stop:
                    try:
                        out = await c.infer("custom/waiter", waiter(5))
                        pids.append(int(out["pid"][0]))
                        done_at.append(time.monotonic())
                    except NosdError as e:
                        failures.append(e.status)

            await asyncio.gather(*(worker() for _ in range(3)))
        return done_at, failures, pids

    with Client(prod.url, token=TOKEN) as c:
        pid = int(c.infer("custom/waiter", waiter(0))["pid"][0])
    killer = threading.Timer(1.5, os.kill, (pid, signal.SIGKILL))
    killer.start()
    t0 = time.monotonic()
    done_at, failures, pids = asyncio.run(load(8.0, retries=8))
    killer.join()
    assert failures == [], failures
    assert pid in pids and any(p != pid for p in pids), "the replica must come back as a new process"
    # The new process serves on: the last requests all went to it, and many did (not a trickle of retries).
    served_by_new = [p for p in pids if p != pid]
    assert len(served_by_new) >= 20 and pids[-3:] == [pids[-1]] * 3 and pids[-1] != pid, (pid, pids[-10:])
    print(
        f"served {len([t for t in done_at if t - t0 < 1.5])} before the kill (1.5 s), "
        f"{len([t for t in done_at if t - t0 > 6.0])} in the last 2 s"
    )

    with Client(prod.url, token=TOKEN) as c:
        pid = int(c.infer("custom/waiter", waiter(0))["pid"][0])
    threading.Timer(1.0, os.kill, (pid, signal.SIGKILL)).start()
    _, failures, _ = asyncio.run(load(4.0, retries=0))
    assert set(failures) <= {503}, failures  # nothing lost silently: every failure says "retry"


def test_a_non_loopback_host_without_a_token_is_warned_about() -> None:
    from nosd.cli import exposure_warning

    assert exposure_warning("127.0.0.1", None) is None and exposure_warning("::1", None) is None
    assert exposure_warning("localhost", None) is None
    assert "without --auth-token" in exposure_warning("0.0.0.0", None)
    assert "without --auth-token" in exposure_warning("my-host.example", None)
    assert exposure_warning("0.0.0.0", "t0ken") is None
