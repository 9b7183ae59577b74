"""Which models are loaded where: replicas, batchers, measured profiles, the memory budget and eviction.

Loading is shared: concurrent first requests for a model await one load. Every
load and eviction decision happens under one lock, so two loads never race for
the same memory. A model is measured on its first load (``nosd.profile``) and
the catalog keeps the result; loading a model that does not fit evicts loaded
models, oldest first (``fifo``) or least recently used (``lru``), each after its
queued and in-flight requests finish. A request that finds its model being
evicted simply loads it again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import ray

from nosd import hub
from nosd.batcher import Batcher, Draining, Outputs
from nosd.errors import BadRequest, InsufficientResources, MemoryBudgetExceeded, NosdError, NotReady
from nosd.logs import detached
from nosd.profile import SWEEP, Profile, catalog_key, load_catalog, save_profile
from nosd.replica import RayReplica, unwrap
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
    profile: Profile | None = None
    loaded_at: float = 0.0
    last_used: float = 0.0
    min_replicas: int = 1
    max_replicas: int = 1
    max_batch_size: int | None = None  # set by the user at load time; else the spec's, else the profile's best

    @property
    def memory_bytes(self) -> int:
        return (self.profile.memory_bytes if self.profile else 0) * len(self.replicas)


class ModelManager:
    def __init__(
        self,
        device: Literal["cpu", "cuda"],
        budget_bytes: int,
        max_inflight: int = 2,
        compiled: bool = False,
        eviction: Literal["fifo", "lru"] = "fifo",
        profile_seconds: float = 1.0,
        profile_sweep: list[int] | None = None,
        max_queue_size: int = 512,
    ):
        self.device = device
        self.budget = budget_bytes
        self.max_inflight = max_inflight
        self.compiled = compiled
        self.eviction = eviction
        self.profile_seconds = profile_seconds
        self.profile_sweep = profile_sweep or SWEEP
        self.max_queue_size = max_queue_size  # a spec's own max_queue_size wins
        self.on_batch: Callable[[str, int], None] | None = None  # metrics hook: model id, samples in the batch
        self.models: dict[str, Model] = {}
        self.lock = asyncio.Lock()
        self._describe: dict[str, str] | None = None  # device name and torch version, from the first worker

    def _model(self, model_id: str) -> Model:
        if model_id not in self.models:
            self.models[model_id] = Model(hub.get(model_id))
        return self.models[model_id]

    def state(self, model_id: str) -> State:
        m = self.models.get(model_id)
        return m.state if m else "unloaded"

    @property
    def used_bytes(self) -> int:
        return sum(m.memory_bytes for m in self.models.values() if m.state in ("ready", "loading"))

    async def ensure(self, model_id: str, **params: Any) -> Model:
        """Load the model if needed (every concurrent caller awaits the same load); apply load parameters."""
        m = self._model(model_id)
        _apply(m, params)
        if m.state != "ready":
            if m.loading is None or m.loading.done():
                m.loading = detached(self._load(m, max(m.min_replicas, params.get("replicas") or 1)))
            await asyncio.shield(m.loading)
        elif params.get("replicas") and params["replicas"] != len(m.replicas):
            async with self.lock:
                await self.scale(m, params["replicas"])
        return m

    async def infer(self, model_id: str, work: Work, timeout_s: float | None = None) -> tuple[Outputs, dict[str, Any]]:
        n = batch_len(work.inputs)
        for _ in range(3):
            m = await self.ensure(model_id)
            m.last_used = time.monotonic()
            if m.batcher is None:
                continue
            try:
                return await m.batcher.submit(work, n, timeout_s)
            except Draining:  # evicted or unloaded between our check and our submit: load it again
                continue
        raise NotReady(f"model '{model_id}' kept being unloaded while this request waited; retry")

    async def _load(self, m: Model, n: int) -> None:
        async with self.lock:
            spec = m.spec
            m.state, m.error = "loading", ""
            replicas: list[RayReplica] = []
            try:
                if m.profile is None and self._describe:
                    m.profile = load_catalog().get(catalog_key(spec.id, **self._describe))
                if m.profile:  # known size: make room before starting anything
                    await self._make_room(m, m.profile.memory_bytes * n)
                await self._wait_for_resources(spec, n)
                replicas = [self._replica(m, i, n) for i in range(n)]
                await asyncio.gather(*(r.start() for r in replicas))
                m.replicas = replicas
                if m.profile is None:
                    m.profile = await self._measure(spec, replicas[0])
                    await self._make_room(m, m.memory_bytes)
            except (NosdError, ray.exceptions.RayError) as e:
                for r in replicas:
                    r.kill()
                m.state, m.error, m.replicas = "failed", str(e), []
                log.error("loading %s failed: %s", spec.id, e)
                raise e if isinstance(e, NosdError) else NotReady(str(e)) from None
            batch = m.max_batch_size or (
                spec.max_batch_size
                if "max_batch_size" in spec.model_fields_set or m.profile is None
                else m.profile.best_batch_size
            )
            m.batcher = Batcher(
                m.replicas,
                batch,
                spec.max_wait_ms,
                self.max_inflight,
                max_queue_size=spec.max_queue_size or self.max_queue_size,
                on_batch=lambda n: self.on_batch(spec.id, n) if self.on_batch else None,
            )
            m.state, m.loaded_at, m.last_used = "ready", time.monotonic(), time.monotonic()
            log.info(
                "%s ready: %d replica(s), max_batch_size %d, %.0f MB measured, %.0f/%.0f MB of the budget used",
                spec.id,
                n,
                batch,
                m.memory_bytes / 1e6,
                self.used_bytes / 1e6,
                self.budget / 1e6,
            )

    async def _measure(self, spec: ModelSpec, replica: RayReplica) -> Profile | None:
        self._describe = await replica.actor.describe.remote()
        known = load_catalog().get(catalog_key(spec.id, **self._describe))
        if known:
            return known
        log.info("profiling %s on %s (first load)", spec.id, self._describe["device"])
        try:
            profile: Profile = await replica.actor.profile.remote(self.profile_seconds, self.profile_sweep)
        except ray.exceptions.RayTaskError as e:  # serve it unmeasured: its own requests will show the error
            log.warning("profiling %s failed, serving it unmeasured: %s", spec.id, unwrap(e))
            return None
        save_profile(profile)
        log.info(
            "profiled %s: %.0f MB, %.3g FLOPs/sample, best batch %d",
            spec.id,
            profile.memory_bytes / 1e6,
            profile.flops_per_sample,
            profile.best_batch_size,
        )
        return profile

    async def _make_room(self, m: Model, need: int) -> None:
        """Evict other models (fifo: oldest load first; lru: least recently used first) until ``need`` fits."""
        if need > self.budget:
            raise MemoryBudgetExceeded(
                f"{m.spec.id} needs {need / 1e6:.0f} MB ({len(m.replicas) or 1} replica(s) measured at "
                f"{need / max(1, len(m.replicas) or 1) / 1e6:.0f} MB) but the whole memory budget is "
                f"{self.budget / 1e6:.0f} MB; raise --memory-budget or load fewer replicas"
            )
        while self.used_bytes - m.memory_bytes + need > self.budget:
            others = [x for x in self.models.values() if x is not m and x.state == "ready"]
            if not others:
                return
            victim = self._victim(others)
            log.info(
                "evicting %s (%s, %.0f MB) to fit %s (%.0f MB) in the %.0f MB budget",
                victim.spec.id,
                self.eviction,
                victim.memory_bytes / 1e6,
                m.spec.id,
                need / 1e6,
                self.budget / 1e6,
            )
            await self._unload(victim)

    async def scale(self, m: Model, n: int) -> None:
        """Add or remove replicas of a loaded model (call under the lock); the batcher sees the list change."""
        if n > len(m.replicas):
            extra = (m.profile.memory_bytes if m.profile else 0) * (n - len(m.replicas))
            if self.used_bytes + extra > self.budget:
                raise MemoryBudgetExceeded(
                    f"{n} replicas of {m.spec.id} need {extra / 1e6:.0f} MB more; "
                    f"{(self.budget - self.used_bytes) / 1e6:.0f} MB of the budget is free"
                )
            await self._wait_for_resources(m.spec, n - len(m.replicas))
            start = max((r.index for r in m.replicas), default=-1) + 1
            new = [self._replica(m, start + i, n) for i in range(n - len(m.replicas))]
            await asyncio.gather(*(r.start() for r in new))
            m.replicas.extend(new)
        while len(m.replicas) > n:
            r = m.replicas.pop()
            while r.inflight:
                await asyncio.sleep(0.01)
            r.kill()
        log.info("%s scaled to %d replica(s)", m.spec.id, n)

    def _replica(self, m: Model, index: int, n: int) -> RayReplica:
        res = m.spec.resources
        threads = res.threads or max(1, (os.cpu_count() or 1) // n)
        gpus = 0.0
        if self.device == "cuda":  # share a GPU by measured memory, so small models pack onto one device
            from nosd.memory import total_bytes

            known = m.profile.memory_bytes / total_bytes("cuda") if m.profile else 0.5
            gpus = res.num_gpus or round(min(1.0, max(0.05, known * 1.2)), 2)
        return RayReplica(m.spec, self.device, index, threads, self.max_inflight, self.compiled, gpus)

    async def _wait_for_resources(self, spec: ModelSpec, n: int, patience_s: float = 10.0) -> None:
        """Make sure Ray can place the replicas: evict other models (same policy as memory) when its CPU/GPU
        shares are taken, and fail with a clear message rather than leave an actor pending in Ray's queue."""
        need = {"CPU": spec.resources.num_cpus * n}
        deadline = asyncio.get_running_loop().time() + patience_s
        last_eviction = -1e9
        while True:
            free = await asyncio.to_thread(ray.available_resources)  # lags a moment behind unloads: retry
            short = {k: (v, free.get(k, 0.0)) for k, v in need.items() if free.get(k, 0.0) + 1e-6 < v}
            if not short:
                return
            now = asyncio.get_running_loop().time()
            others = [x for x in self.models.values() if x.spec.id != spec.id and x.state == "ready"]
            if others and now - last_eviction > 2.0:  # give Ray's view a moment to catch up between evictions
                victim = self._victim(others)
                log.info("evicting %s (%s) to free Ray resources for %s", victim.spec.id, self.eviction, spec.id)
                await self._unload(victim)
                last_eviction, deadline = now, now + patience_s
            elif now > deadline:
                detail = ", ".join(f"{k} {v:g} needed, {f:g} free" for k, (v, f) in short.items())
                raise InsufficientResources(
                    f"cannot place {n} replica(s) of {spec.id}: {detail}; unload a model or add Ray resources"
                )
            await asyncio.sleep(0.2)

    def _victim(self, candidates: list[Model]) -> Model:
        return min(candidates, key=lambda x: x.loaded_at if self.eviction == "fifo" else x.last_used)

    async def forget_segment(self, key: str) -> None:
        """A region was unregistered: every replica unmaps its segment."""
        await asyncio.gather(*(r.forget(key) for m in self.models.values() for r in m.replicas))

    async def unload(self, model_id: str) -> None:
        m = self._model(model_id)
        if m.loading and not m.loading.done():
            await asyncio.gather(m.loading, return_exceptions=True)
        async with self.lock:
            await self._unload(m)

    async def _unload(self, m: Model) -> None:
        batcher, replicas = m.batcher, m.replicas
        m.state, m.batcher = "unloaded", None
        if batcher:
            await batcher.drain()  # queued and in-flight requests finish first
        m.replicas = []
        for r in replicas:
            r.kill()
        log.info("%s unloaded", m.spec.id)

    async def close(self) -> None:
        async with self.lock:
            await asyncio.gather(*(self._unload(m) for m in self.models.values() if m.state != "unloaded"))

    def listing(self) -> list[dict[str, Any]]:
        return [
            {"name": s.id, "task": s.task, "state": self.state(s.id), "platform": s.platform} for s in hub.all_specs()
        ]

    def describe(self, model_id: str) -> dict[str, Any]:
        spec = hub.get(model_id)
        m = self.models.get(model_id)
        meta = spec.metadata()
        if m and m.batcher:
            meta["max_batch_size"] = m.batcher.max_batch_size
        meta["state"] = {
            "state": self.state(model_id),
            "loaded": self.state(model_id) == "ready",
            "replicas": len(m.replicas) if m else 0,
            "nodes": [r.info.get("node", "") for r in m.replicas] if m else [],
            "min_replicas": m.min_replicas if m else 1,
            "max_replicas": m.max_replicas if m else 1,
            "memory_bytes": m.memory_bytes if m else 0,
            "error": m.error if m else "",
        }
        meta["profile"] = m.profile.model_dump() if m and m.profile else None
        return meta

    def memory(self) -> dict[str, Any]:
        from nosd.memory import total_bytes, used_bytes

        return {
            "device": self.device,
            "total_bytes": total_bytes(self.device),
            "budget_bytes": self.budget,
            "models_bytes": self.used_bytes,
            "device_used_bytes": used_bytes(self.device),
            "eviction": self.eviction,
        }


def _apply(m: Model, params: dict[str, Any]) -> None:
    """Load parameters: replicas, min_replicas, max_replicas, max_batch_size (all positive integers)."""
    for k in ("replicas", "min_replicas", "max_replicas", "max_batch_size"):
        v = params.get(k)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise BadRequest(f"parameters.{k} must be a positive integer, got {v!r}")
    if params.get("min_replicas"):
        m.min_replicas = params["min_replicas"]
    if params.get("max_replicas"):
        m.max_replicas = params["max_replicas"]
    if params.get("replicas"):
        m.min_replicas = min(m.min_replicas, params["replicas"])
        m.max_replicas = max(m.max_replicas, params["replicas"])
    m.max_replicas = max(m.max_replicas, m.min_replicas)
    if params.get("max_batch_size"):
        m.max_batch_size = params["max_batch_size"]
        if m.batcher:
            m.batcher.max_batch_size = params["max_batch_size"]


def batch_len(inputs: dict[str, np.ndarray | ShmRef]) -> int:
    shapes = [a.shape or () for a in inputs.values()]
    sizes = {s[0] if len(s) else -1 for s in shapes}
    if -1 in sizes:
        raise BadRequest("every input needs a leading batch dimension (shape [N, ...])")
    if len(sizes) != 1:
        raise BadRequest(f"inputs disagree on the batch size (dim 0): {sorted(sizes)}")
    return sizes.pop()
