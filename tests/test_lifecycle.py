"""Start, load, unload, SIGTERM: in-flight work finishes, and nothing the daemon started outlives it."""

from __future__ import annotations

import signal
import threading
import time

import httpx
import numpy as np
import pytest
import torch

from conftest import start_daemon
from nosclient import Client


def test_sigterm_finishes_in_flight_requests_and_leaves_no_process(tmp_path) -> None:
    d = start_daemon(tmp_path, "--models", "custom/sleeper")
    try:
        assert d.leftovers(), "the daemon's Ray should be running in its session"
        result: dict = {}

        def slow_request() -> None:
            with Client(d.url) as c:
                result["pid"] = c.infer("custom/sleeper", {"seconds": np.full(1, 3.0, np.float32)})["pid"]

        t = threading.Thread(target=slow_request)
        t.start()
        time.sleep(1.0)
        d.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        try:  # draining: readiness is off, or the socket is already closed
            assert httpx.get(d.url + "/v2/health/ready", timeout=2).status_code == 503
        except httpx.TransportError:
            pass
        t.join(30)
        assert "pid" in result, "the in-flight request must complete during the drain"
        assert d.proc.wait(60) == 0, d.log.read_text()[-2000:]
        deadline = time.monotonic() + 10
        while d.leftovers() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert d.leftovers() == [], "processes of the daemon's Ray outlived it"
    finally:
        d.stop(signal.SIGKILL)


def test_load_and_unload_through_the_repository_api(daemon) -> None:
    with Client(daemon.url) as c:
        meta = c.load("custom/scaler", replicas=2)
        assert meta["state"]["loaded"] and meta["state"]["replicas"] == 2
        pids = {int(c.infer("custom/scaler", {"x": np.ones((1, 4), np.float32)})["pid"][0]) for _ in range(20)}
        assert len(pids) == 2, "both replicas must receive batches"
        assert c.load("custom/scaler", replicas=1)["state"]["replicas"] == 1
        assert c.ready("custom/scaler")
        c.unload("custom/scaler")
        assert not c.ready("custom/scaler")
        assert c.metadata("custom/scaler")["state"]["state"] == "unloaded"
        # the next request loads it again and waits for it rather than failing
        y = c.infer("custom/scaler", {"x": np.ones((1, 4), np.float32)})["y"]
        assert y.tolist() == [[3.0] * 4]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_gpu_runtime_without_a_gpu_fails_with_a_clear_message(tmp_path) -> None:
    try:
        start_daemon(tmp_path, "--runtime", "gpu", timeout=60)
    except RuntimeError as e:
        assert "--runtime gpu, but Ray sees no GPU" in str(e)
    else:  # pragma: no cover - only on a GPU machine
        raise AssertionError("expected nosd to refuse --runtime gpu without a GPU")


def test_a_preloaded_model_that_cannot_load_is_reported_and_the_rest_are_served(tmp_path) -> None:
    d = start_daemon(tmp_path, "--models", "nosd/identity,torchvision/resnet50", env={"TORCH_HOME": str(tmp_path)})
    try:
        with Client(d.url) as c:
            assert c.ready() and c.ready("nosd/identity") and not c.ready("torchvision/resnet50")
            state = c.metadata("torchvision/resnet50")["state"]
            assert state["state"] == "failed" and "resnet50-11ad3fa6.pth is missing" in state["error"]
    finally:
        assert d.stop() == 0


def test_exit_on_error_makes_a_failed_preload_fatal(tmp_path) -> None:
    with pytest.raises(RuntimeError, match=r"resnet50-11ad3fa6\.pth is missing"):
        start_daemon(
            tmp_path,
            "--exit-on-error",
            "--models",
            "torchvision/resnet50",
            env={"TORCH_HOME": str(tmp_path)},
            timeout=120,
        )
