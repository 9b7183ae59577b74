"""ModelManager on a real daemon with a small budget: profiles, FIFO/LRU eviction, reloads, too-large, scaling."""

from __future__ import annotations

import asyncio
import json
import re
import time

import httpx
import numpy as np
import pytest

from conftest import start_daemon
from nosclient import AsyncClient, Client, NosdError

X = {"x": np.ones((1, 4), np.float32)}


def _daemon(tmp_path, *args):
    # 420 MB holds two 150 MB ballast models (plus their worker's own growth), never three.
    return start_daemon(
        tmp_path, "--memory-budget", "420MB", "--autoscale-up-s", "0.5", "--autoscale-down-s", "1.5", *args
    )


def _loaded(c: Client) -> set[str]:
    return {m["name"] for m in c.models() if m["state"] == "ready" and m["name"].startswith("custom/ballast")}


@pytest.mark.parametrize("policy", ["fifo", "lru"])
def test_eviction_order_and_reload_on_demand(tmp_path, policy: str) -> None:
    d = _daemon(tmp_path, "--eviction", policy)
    try:
        with Client(d.url) as c:
            c.infer("custom/ballast1", X)
            c.infer("custom/ballast2", X)
            assert _loaded(c) == {"custom/ballast1", "custom/ballast2"}
            c.infer("custom/ballast1", X)  # used last: LRU keeps it, FIFO does not care
            c.infer("custom/ballast3", X)
            evicted = "custom/ballast1" if policy == "fifo" else "custom/ballast2"
            assert _loaded(c) == {"custom/ballast1", "custom/ballast2", "custom/ballast3"} - {evicted}
            assert c.infer(evicted, X)["y"].tolist() == [[2.0] * 4]  # reloads on demand
            assert evicted in _loaded(c) and len(_loaded(c)) == 2
            mem = httpx.get(d.url + "/nosd/memory").json()
            assert mem["models_bytes"] <= mem["budget_bytes"] == 420_000_000
        log = d.log.read_text()
        assert re.search(rf"evicting {evicted} \({policy}", log)
    finally:
        assert d.stop() == 0


def test_profile_is_measured_on_first_load_and_reused_from_the_catalog(tmp_path) -> None:
    d = _daemon(tmp_path)
    try:
        with Client(d.url) as c:
            c.infer("custom/ballast1", X)
            meta = c.metadata("custom/ballast1")
        p = meta["profile"]
        assert 140e6 < p["memory_bytes"] < 260e6, p["memory_bytes"]  # the 150 MB block, measured
        assert p["best_batch_size"] in (1, 2, 4) and [s["batch_size"] for s in p["sweep"]] == [1, 2, 4]
        assert meta["state"]["memory_bytes"] == p["memory_bytes"] and meta["state"]["loaded"]
        catalog = json.loads((tmp_path / "nosd_home" / "catalog.json").read_text())
        assert any(k.startswith("custom/ballast1|cpu") for k in catalog)
    finally:
        assert d.stop() == 0
    d = _daemon(tmp_path)  # same NOSD_HOME: the catalog entry is reused, nothing re-measured
    try:
        with Client(d.url) as c:
            c.infer("custom/ballast1", X)
            assert c.metadata("custom/ballast1")["profile"]["measured_at"] == p["measured_at"]
        assert "profiling custom/ballast1" not in d.log.read_text()
    finally:
        assert d.stop() == 0


def test_a_model_larger_than_the_budget_gets_an_error_naming_the_sizes(tmp_path) -> None:
    d = _daemon(tmp_path)
    try:
        with Client(d.url) as c:
            with pytest.raises(NosdError, match=r"custom/ballast-huge needs \d+ MB .* budget is 420 MB") as e:
                c.infer("custom/ballast-huge", X)
            assert e.value.status == 507
            assert c.infer("custom/ballast1", X)["y"].shape == (1, 4)
    finally:
        assert d.stop() == 0


async def test_two_concurrent_requests_for_two_evicted_models_both_complete(tmp_path) -> None:
    d = _daemon(tmp_path, "--memory-budget", "250MB")  # room for one ballast model at a time
    try:
        async with AsyncClient(d.url) as c:
            a, b = await asyncio.wait_for(
                asyncio.gather(c.infer("custom/ballast1", X), c.infer("custom/ballast2", X)), 120
            )
            assert a["y"].tolist() == b["y"].tolist() == [[2.0] * 4]
    finally:
        assert d.stop() == 0


def test_autoscaling_adds_a_replica_under_load_and_removes_it_when_idle(tmp_path) -> None:
    d = _daemon(tmp_path, "--memory-budget", "0.5")
    try:
        with Client(d.url) as c:
            c.load("custom/sleeper", min_replicas=1, max_replicas=2)

            async def load() -> set[int]:
                async with AsyncClient(d.url) as ac:
                    outs = await asyncio.gather(
                        *(ac.infer("custom/sleeper", {"seconds": np.full(1, 0.3, np.float32)}) for _ in range(24))
                    )
                return {int(o["pid"][0]) for o in outs}

            pids = asyncio.run(load())
            assert len(pids) == 2, "a second replica should have joined and served"
            deadline = time.monotonic() + 20
            while c.metadata("custom/sleeper")["state"]["replicas"] > 1:
                assert time.monotonic() < deadline, "the idle replica was never removed"
                time.sleep(0.3)
        log = d.log.read_text()
        assert "autoscale custom/sleeper: 1 -> 2" in log and "autoscale custom/sleeper: 2 -> 1" in log
    finally:
        assert d.stop() == 0


def test_models_are_evicted_when_ray_has_no_cpu_share_left(tmp_path) -> None:
    # --ray-cpus 1 places four 0.25-CPU replicas, not five: the fifth load evicts the oldest
    d = start_daemon(tmp_path, "--ray-cpus", "1", "--memory-budget", "0.5")
    try:
        with Client(d.url) as c:
            for model in ("custom/scaler", "custom/ballast1", "custom/ballast2", "custom/ballast3"):
                c.infer(model, X)
            assert c.infer("custom/sleeper", {"seconds": np.zeros(1, np.float32)})["pid"].shape == (1,)
            states = {m["name"]: m["state"] for m in c.models()}
        assert states["custom/scaler"] == "unloaded" and states["custom/ballast1"] == "ready"
        assert "evicting custom/scaler (fifo) to free Ray resources for custom/sleeper" in d.log.read_text()
    finally:
        assert d.stop() == 0
