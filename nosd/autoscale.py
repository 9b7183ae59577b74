"""Replica autoscaling by queue depth: busy for a while -> one more replica; idle for a while -> one fewer.

Only models loaded with ``max_replicas`` above ``min_replicas`` scale. Adding a
replica must fit the memory budget; each decision is logged with its reason.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from nosd.errors import NosdError
from nosd.manager import Model, ModelManager

log = logging.getLogger("nosd.autoscale")


@dataclass
class Policy:
    interval_s: float = 0.5
    up_after_s: float = 2.0  # queue above target this long -> add a replica
    down_after_s: float = 10.0  # no queue and nothing in flight this long -> remove one
    target: float | None = None  # queued samples per replica; None: one full batch


@dataclass
class _Watch:
    busy_since: float | None = None
    idle_since: float | None = None


async def run(manager: ModelManager, policy: Policy) -> None:
    watches: dict[str, _Watch] = {}
    while True:
        await asyncio.sleep(policy.interval_s)
        for model_id, m in list(manager.models.items()):
            if m.state != "ready" or m.batcher is None or m.max_replicas <= m.min_replicas:
                watches.pop(model_id, None)
                continue
            await _step(manager, m, watches.setdefault(model_id, _Watch()), policy)


async def _step(manager: ModelManager, m: Model, w: _Watch, policy: Policy) -> None:
    assert m.batcher is not None
    now, n = time.monotonic(), len(m.replicas)
    target = policy.target or m.batcher.max_batch_size
    per_replica = m.batcher.queued / max(1, n)
    if per_replica > target:
        w.busy_since, w.idle_since = w.busy_since or now, None
        if now - w.busy_since >= policy.up_after_s and n < m.max_replicas:
            await _scale(
                manager, m, n + 1, f"{per_replica:.1f} queued per replica > {target:g} for {now - w.busy_since:.1f}s"
            )
            w.busy_since = None
    elif m.batcher.queued == 0 and m.batcher.inflight == 0:
        w.idle_since, w.busy_since = w.idle_since or now, None
        if now - w.idle_since >= policy.down_after_s and n > m.min_replicas:
            await _scale(manager, m, n - 1, f"idle for {now - w.idle_since:.1f}s")
            w.idle_since = now
    else:
        w.busy_since = w.idle_since = None


async def _scale(manager: ModelManager, m: Model, n: int, reason: str) -> None:
    if manager.lock.locked():  # a load or eviction is under way; decide again next round
        return
    async with manager.lock:
        if m.state != "ready":
            return
        try:
            log.info("autoscale %s: %d -> %d replica(s) (%s)", m.spec.id, len(m.replicas), n, reason)
            await manager.scale(m, n)
        except NosdError as e:
            log.info("autoscale %s: stays at %d replica(s): %s", m.spec.id, len(m.replicas), e)
