"""The per-model micro-batcher: one asyncio queue, one decision rule, ONE worker call per batch.

A batch leaves when a replica has a free slot and either
  * a replica is idle (then waiting would only add latency), or
  * ``max_batch_size`` samples are queued, or
  * ``max_wait_ms`` has passed since the oldest queued request arrived.
While every replica is busy, requests keep accumulating, so batches grow with
load. A request counts as many samples as its batch dim; one larger than
``max_batch_size`` runs alone, as its own batch, rather than being split.

The queue is bounded: at ``max_queue_size`` requests a new one is refused at
once (503 with Retry-After). A request with a deadline that passes while it is
queued is dropped before compute (504); one whose caller went away (client
disconnect cancels the handler) is dropped too. Once dispatched, a request runs.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from nosd.errors import DeadlineExceeded, NotReady, Overloaded
from nosd.logs import detached


class Draining(NotReady):
    """The model is being unloaded or evicted; the manager loads it again for this request."""


Outputs = dict[str, Any]


class Replica(Protocol):
    name: str
    inflight: int

    async def infer(self, works: list[Any]) -> tuple[list[Outputs | BaseException], float]: ...


@dataclass
class Item:
    work: Any  # what the worker gets for this request (opaque here)
    n: int
    future: asyncio.Future[tuple[Outputs, dict[str, Any]]]
    enqueued: float = field(default_factory=time.perf_counter)
    dispatched: bool = False


class Batcher:
    def __init__(
        self,
        replicas: list[Replica],
        max_batch_size: int,
        max_wait_ms: float,
        max_inflight: int = 2,
        max_queue_size: int = 1024,
        on_batch: Callable[[int], None] | None = None,
    ):
        self.replicas = replicas  # shared with the manager, which may add or remove replicas
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1e3
        self.max_inflight = max_inflight
        self.max_queue_size = max_queue_size
        self.on_batch = on_batch  # metrics: called with each dispatched batch's size
        self.batch_s = 0.05  # moving average of a batch's duration, for Retry-After
        self._queue: deque[Item] = deque()
        self._wake = asyncio.Event()
        self._closing = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._turn = 0
        self._loop = detached(self._run())

    @property
    def queued(self) -> int:
        return sum(it.n for it in self._queue)

    @property
    def queued_requests(self) -> int:
        return len(self._queue)

    @property
    def inflight(self) -> int:
        return sum(r.inflight for r in self.replicas)

    async def submit(self, work: Any, n: int, timeout_s: float | None = None) -> tuple[Outputs, dict[str, Any]]:
        if self._closing:
            raise Draining("model is unloading; retry after it is loaded again")
        if len(self._queue) >= self.max_queue_size:
            raise Overloaded(
                f"{len(self._queue)} requests are queued for this model (max_queue_size {self.max_queue_size}); "
                "retry later or add replicas",
                retry_after_s=self.retry_after_s(),
            )
        item = Item(work, n, asyncio.get_running_loop().create_future())
        self._queue.append(item)
        self._wake.set()
        try:
            if timeout_s is None:
                return await item.future
            return await asyncio.wait_for(asyncio.shield(item.future), timeout_s)
        except TimeoutError:
            if item.dispatched:  # the deadline bounds the wait in the queue, not the compute
                return await item.future
            self._drop(item)
            raise DeadlineExceeded(
                f"timeout_ms {timeout_s * 1e3:g} passed while the request was queued; it was not run"
            ) from None
        except asyncio.CancelledError:  # the client disconnected
            if not item.dispatched:
                self._drop(item)
            raise

    def _drop(self, item: Item) -> None:
        item.future.cancel()
        try:  # O(queue length), paid only by a request that gives up
            self._queue.remove(item)
        except ValueError:
            pass

    def retry_after_s(self) -> float:
        """About how long the queue takes to drain at the recent batch duration."""
        batches = self.queued / self.max_batch_size
        return batches * self.batch_s / max(1, len(self.replicas) * self.max_inflight)

    def _free_replica(self) -> Replica | None:
        """The least-loaded replica with a free slot; ties rotate so idle replicas share the work."""
        best, n = None, len(self.replicas)
        for i in range(n):
            r = self.replicas[(self._turn + i) % n]
            if r.inflight < self.max_inflight and (best is None or r.inflight < best.inflight):
                best = r
        return best

    def _take(self) -> list[Item]:
        """Pop the longest prefix of the queue that fits in one batch (at least one request)."""
        batch, n = [], 0
        while self._queue and (not batch or n + self._queue[0].n <= self.max_batch_size):
            item = self._queue.popleft()
            if item.future.done():  # the client went away while queued
                continue
            item.dispatched = True
            batch.append(item)
            n += item.n
        return batch

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            timeout: float | None = None
            if self._queue:
                replica = self._free_replica()
                if replica is not None:
                    due = self._queue[0].enqueued + self.max_wait - time.perf_counter()
                    if replica.inflight == 0 or due <= 0 or self.queued >= self.max_batch_size:
                        batch = self._take()
                        if batch:
                            self._dispatch(replica, batch)
                        continue
                    timeout = due
            elif self._closing:
                return
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass

    def _dispatch(self, replica: Replica, batch: list[Item]) -> None:
        if self.on_batch:
            self.on_batch(sum(it.n for it in batch))
        replica.inflight += 1
        self._turn += 1
        task = asyncio.create_task(self._call(replica, batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _call(self, replica: Replica, batch: list[Item]) -> None:
        started = time.perf_counter()
        try:
            outputs, compute_ms = await replica.infer([it.work for it in batch])
        except Exception as e:  # every caller of a failed batch gets the error
            for it in batch:
                if not it.future.done():
                    it.future.set_exception(e)
        else:
            size = sum(it.n for it in batch)
            for it, out in zip(batch, outputs, strict=True):
                if it.future.done():
                    continue
                if isinstance(out, BaseException):  # this request alone failed (e.g. its shared memory)
                    it.future.set_exception(out)
                else:
                    params = {
                        "batch_size": size,
                        "queue_ms": round((started - it.enqueued) * 1e3, 3),
                        "compute_ms": round(compute_ms, 3),
                        "replica": replica.name,
                    }
                    it.future.set_result((out, params))
        finally:
            self.batch_s = 0.8 * self.batch_s + 0.2 * (time.perf_counter() - started)
            replica.inflight -= 1
            self._wake.set()

    async def drain(self) -> None:
        """Stop taking requests, finish every queued and in-flight one."""
        self._closing = True
        self._wake.set()
        await self._loop
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
