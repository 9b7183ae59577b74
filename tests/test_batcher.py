"""The batching rule, with in-process replicas that record what they were sent (the rule, not Ray, is under test)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from nosd.batcher import Batcher
from nosd.logs import REQUEST_ID


class Recorder:
    def __init__(self, name: str = "r", delay: float = 0.05, fail: bool = False):
        self.name, self.inflight, self.delay, self.fail = name, 0, delay, fail
        self.batches: list[list[int]] = []

    async def infer(self, requests):
        self.batches.append([len(r["x"]) for r in requests])
        await asyncio.sleep(self.delay)
        if self.fail:
            raise RuntimeError("boom")
        return [{"y": r["x"] * 2} for r in requests], self.delay * 1e3


def x(n: int, v: float = 1.0) -> dict[str, np.ndarray]:
    return {"x": np.full((n, 2), v, np.float32)}


async def test_an_idle_replica_gets_a_lone_request_at_once() -> None:
    r = Recorder(delay=0.0)
    b = Batcher([r], max_batch_size=8, max_wait_ms=600_000)
    # Ten minutes of max wait: finishing within 30 s shows the idle replica did not wait for it.
    out, params = await asyncio.wait_for(b.submit(x(1), 1), timeout=30)
    assert params["batch_size"] == 1 and r.batches == [[1]]
    np.testing.assert_array_equal(out["y"], 2 * x(1)["x"])
    await b.drain()


async def test_requests_queued_while_busy_leave_as_one_batch_and_results_go_back_to_each() -> None:
    r = Recorder(delay=0.1)
    b = Batcher([r], max_batch_size=8, max_wait_ms=50, max_inflight=1)
    first = asyncio.create_task(b.submit(x(1, 0.0), 1))
    await asyncio.sleep(0.01)  # the first is computing now
    results = [await first, *await asyncio.gather(*(b.submit(x(1, float(i)), 1) for i in range(1, 6)))]
    assert r.batches == [[1], [1] * 5]  # the first went alone, the rest queued behind it and left together
    for i, (out, _params) in enumerate(results):
        assert out["y"][0, 0] == 2 * i
    assert results[-1][1]["batch_size"] == 5
    await b.drain()


async def test_a_batch_never_exceeds_max_batch_size_and_multi_sample_requests_count_as_many() -> None:
    r = Recorder(delay=0.05)
    b = Batcher([r], max_batch_size=4, max_wait_ms=10, max_inflight=1)
    await asyncio.gather(*(b.submit(x(3), 3) for _ in range(4)), b.submit(x(9), 9))
    assert all(sum(batch) <= 4 or len(batch) == 1 for batch in r.batches)
    assert [9] in r.batches  # larger than the max: runs alone, never split
    await b.drain()


async def test_every_caller_of_a_failed_batch_gets_the_error() -> None:
    r = Recorder(delay=0.05, fail=True)
    b = Batcher([r], max_batch_size=8, max_wait_ms=10, max_inflight=1)
    results = await asyncio.gather(*(b.submit(x(1), 1) for _ in range(5)), return_exceptions=True)
    assert all(isinstance(e, RuntimeError) for e in results)
    await b.drain()


async def test_batches_spread_over_replicas_least_loaded_first() -> None:
    a, c = Recorder("a", delay=0.1), Recorder("c", delay=0.1)
    b = Batcher([a, c], max_batch_size=2, max_wait_ms=5, max_inflight=1)
    results = await asyncio.gather(*(b.submit(x(1), 1) for _ in range(8)))
    assert a.batches and c.batches
    assert {p["replica"] for _, p in results} == {"a", "c"}
    await b.drain()


async def test_drain_finishes_queued_work_then_refuses_new_requests() -> None:
    r = Recorder(delay=0.05)
    b = Batcher([r], max_batch_size=2, max_wait_ms=5, max_inflight=1)
    pending = [asyncio.create_task(b.submit(x(1), 1)) for _ in range(5)]
    await asyncio.sleep(0)
    await b.drain()
    assert all(t.done() and not t.exception() for t in pending)
    from nosd.errors import NotReady

    with pytest.raises(NotReady):
        await b.submit(x(1), 1)


async def test_a_full_queue_refuses_at_once_with_a_retry_hint() -> None:
    from nosd.errors import Overloaded, headers_of, status_of

    r = Recorder(delay=0.2)
    b = Batcher([r], max_batch_size=1, max_wait_ms=0, max_inflight=1, max_queue_size=3)
    running = [asyncio.create_task(b.submit(x(1, 0), 1))]
    await asyncio.sleep(0.02)  # dispatched: the replica is busy for 0.2 s
    running += [asyncio.create_task(b.submit(x(1, i), 1)) for i in range(1, 4)]
    await asyncio.sleep(0.02)
    assert b.queued_requests == 3
    with pytest.raises(Overloaded) as e:
        await b.submit(x(1), 1)
    assert status_of(e.value) == 503 and "max_queue_size 3" in str(e.value)
    assert int(headers_of(e.value)["Retry-After"]) >= 1
    assert len(await asyncio.gather(*running)) == 4  # the admitted ones all complete
    await b.drain()


async def test_a_deadline_passed_in_the_queue_drops_the_request_before_compute() -> None:
    from nosd.errors import DeadlineExceeded, status_of

    r = Recorder(delay=0.3)
    b = Batcher([r], max_batch_size=1, max_wait_ms=0, max_inflight=1)
    first = asyncio.create_task(b.submit(x(1, 1), 1))  # occupies the replica for 0.3 s
    await asyncio.sleep(0.02)
    with pytest.raises(DeadlineExceeded) as e:
        await b.submit(x(1, 2), 1, timeout_s=0.05)
    assert status_of(e.value) == 504
    assert b.queued_requests == 0
    await first
    # A deadline shorter than the compute does not cut a request already running.
    out, _ = await b.submit(x(1, 3), 1, timeout_s=0.05)
    assert out["y"][0, 0] == 6
    assert r.batches == [[1], [1]]  # the expired request never reached the replica
    await b.drain()


async def test_a_cancelled_caller_leaves_the_queue() -> None:
    r = Recorder(delay=0.2)
    b = Batcher([r], max_batch_size=1, max_wait_ms=0, max_inflight=1)
    first = asyncio.create_task(b.submit(x(1, 1), 1))
    await asyncio.sleep(0.02)
    gone = asyncio.create_task(b.submit(x(1, 2), 1))  # what aiohttp does to a disconnected client's handler
    await asyncio.sleep(0.02)
    assert b.queued_requests == 1
    gone.cancel()
    await asyncio.sleep(0)
    assert b.queued_requests == 0
    await first
    await b.drain()
    assert r.batches == [[1]]


async def test_the_dispatch_loop_does_not_log_under_the_request_id_that_created_it() -> None:
    """The batcher is created inside some request's context; its batches serve everyone's requests."""
    seen: list[str] = []

    class Tagging(Recorder):
        async def infer(self, requests):
            seen.append(REQUEST_ID.get())
            return await super().infer(requests)

    token = REQUEST_ID.set("first-request")
    try:
        b = Batcher([Tagging()], max_batch_size=8, max_wait_ms=1)
        await b.submit(x(1), 1)
    finally:
        REQUEST_ID.reset(token)
    await b.drain()
    assert seen == ["-"]
