"""Which models are loaded where: Ray actors per replica, one batcher per model, load/unload.

Loading is idempotent and shared: concurrent first requests for a model wait on
one load. Later issues add memory budgets, eviction and autoscaling here.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import ray

from nosd import hub
from nosd.batcher import Batcher, Outputs
from nosd.errors import BadRequest, InsufficientResources, NosdError
from nosd.replica import RayReplica
from nosd.shm import ShmRef
from nosd.spec import ModelSpec
from nosd.worker import Work

log = logging.getLogger("nosd.manager")
State = Literal["unloaded", "loading", "ready", "failed"]


@dataclass
class Model:
    spec: ModelSpec
    state: State = "unloaded"
    replicas: list[RayReplica] = field(default_factory=list)
    batcher: Batcher | None = None
    loading: asyncio.Task[None] | None = None
    error: str = ""


class ModelManager:
    def __init__(self, device: Literal["cpu", "cuda"], max_inflight: int = 2, compiled: bool = False):
        self.device = device
        self.max_inflight = max_inflight
        self.compiled = compiled
        self.models: dict[str, Model] = {}

    def _model(self, model_id: str) -> Model:
        if model_id not in self.models:
            self.models[model_id] = Model(hub.get(model_id))
        return self.models[model_id]

    def state(self, model_id: str) -> State:
        m = self.models.get(model_id)
        return m.state if m else "unloaded"

    async def ensure(self, model_id: str, replicas: int | None = None) -> Model:
        """Load the model if needed; every concurrent caller awaits the same load."""
        m = self._model(model_id)
        if m.state != "ready":
            if m.loading is None or m.loading.done():
                m.loading = asyncio.create_task(self._load(m, replicas or 1))
            await asyncio.shield(m.loading)
        elif replicas and replicas != len(m.replicas):
            await self.scale(m, replicas)
        return m

    async def scale(self, m: Model, n: int) -> None:
        """Add or remove replicas of a loaded model; the batcher sees the shared list change."""
        threads = m.spec.resources.threads or max(1, (os.cpu_count() or 1) // n)
        if n > len(m.replicas):
            await self._wait_for_resources(m.spec, n - len(m.replicas))
            start = max((r.index for r in m.replicas), default=-1) + 1
            new = [self._replica(m.spec, start + i, threads) for i in range(n - len(m.replicas))]
            await asyncio.gather(*(r.start() for r in new))
            m.replicas.extend(new)
        while len(m.replicas) > n:
            r = m.replicas.pop()
            while r.inflight:
                await asyncio.sleep(0.01)
            r.kill()
        log.info("%s scaled to %d replica(s)", m.spec.id, n)

    async def _load(self, m: Model, n: int) -> None:
        spec = m.spec
        m.state, m.error = "loading", ""
        threads = spec.resources.threads or max(1, (os.cpu_count() or 1) // n)
        log.info("loading %s: %d replica(s) on %s, %d thread(s) each", spec.id, n, self.device, threads)
        replicas: list[RayReplica] = []
        try:
            await self._wait_for_resources(spec, n)
            replicas = [self._replica(spec, i, threads) for i in range(n)]
            await asyncio.gather(*(r.start() for r in replicas))
        except NosdError as e:
            for r in replicas:
                r.kill()
            m.state, m.error = "failed", str(e)
            log.error("loading %s failed: %s", spec.id, e)
            raise
        m.replicas = replicas
        m.batcher = Batcher(m.replicas, spec.max_batch_size, spec.max_wait_ms, self.max_inflight)
        m.state = "ready"
        log.info("%s ready (pids %s)", spec.id, [r.info.get("pid") for r in replicas])

    def _replica(self, spec: ModelSpec, index: int, threads: int) -> RayReplica:
        return RayReplica(spec, self.device, index, threads, self.max_inflight, self.compiled)

    async def _wait_for_resources(self, spec: ModelSpec, n: int, patience_s: float = 10.0) -> None:
        """Fail fast with a clear message instead of leaving an actor pending forever in Ray's queue."""
        need = {"CPU": spec.resources.num_cpus * n}
        if self.device == "cuda":
            need["GPU"] = spec.resources.num_gpus * n
        deadline = asyncio.get_running_loop().time() + patience_s
        while True:
            free = await asyncio.to_thread(ray.available_resources)  # lags a moment behind unloads: retry
            short = {k: (v, free.get(k, 0.0)) for k, v in need.items() if free.get(k, 0.0) + 1e-6 < v}
            if not short:
                return
            if asyncio.get_running_loop().time() > deadline:
                detail = ", ".join(f"{k} {v:g} needed, {f:g} free" for k, (v, f) in short.items())
                raise InsufficientResources(
                    f"cannot place {n} replica(s) of {spec.id}: {detail}; unload a model or add Ray resources"
                )
            await asyncio.sleep(0.5)

    async def infer(self, model_id: str, work: Work) -> tuple[Outputs, dict[str, Any]]:
        n = _batch_len(work.inputs)
        m = await self.ensure(model_id)
        assert m.batcher is not None
        return await m.batcher.submit(work, n)

    async def forget_segment(self, key: str) -> None:
        """A region was unregistered: every replica unmaps its segment."""
        await asyncio.gather(*(r.forget(key) for m in self.models.values() for r in m.replicas))

    async def unload(self, model_id: str) -> None:
        m = self._model(model_id)
        if m.loading and not m.loading.done():
            await asyncio.gather(m.loading, return_exceptions=True)
        batcher, replicas = m.batcher, m.replicas
        m.state, m.batcher, m.replicas = "unloaded", None, []
        if batcher:
            await batcher.drain()
        for r in replicas:
            r.kill()
        log.info("%s unloaded", model_id)

    async def close(self) -> None:
        await asyncio.gather(*(self.unload(i) for i, m in self.models.items() if m.state != "unloaded"))

    def listing(self) -> list[dict[str, Any]]:
        return [
            {"name": s.id, "task": s.task, "state": self.state(s.id), "platform": s.platform} for s in hub.all_specs()
        ]

    def describe(self, model_id: str) -> dict[str, Any]:
        spec = hub.get(model_id)
        m = self.models.get(model_id)
        meta = spec.metadata()
        meta["state"] = {
            "state": self.state(model_id),
            "loaded": self.state(model_id) == "ready",
            "replicas": len(m.replicas) if m else 0,
            "error": m.error if m else "",
        }
        return meta


def _batch_len(inputs: dict[str, np.ndarray | ShmRef]) -> int:
    shapes = [a.shape or () for a in inputs.values()]
    sizes = {s[0] if len(s) else -1 for s in shapes}
    if -1 in sizes:
        raise BadRequest("every input needs a leading batch dimension (shape [N, ...])")
    if len(sizes) != 1:
        raise BadRequest(f"inputs disagree on the batch size (dim 0): {sorted(sizes)}")
    return sizes.pop()
