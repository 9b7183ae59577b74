"""One replica: a Ray actor holding the model, called by plain actor calls or a Ray Compiled Graph.

A plain Ray actor call costs ~1.5-2 ms here; a compiled graph (shared-memory
channels, no per-call scheduling) ~0.4 ms. But in Ray 2.60 its channel readers
busy-poll: after the first call, two threads per replica spin at 100% CPU even
when idle, which halves resnet18 throughput on a 2-core machine. So compiled
graphs are opt-in (``--compiled-graph``). Compiled graphs shut down on a system error
(the worker process died), and executions still in flight then never resolve,
so this class watches the actor itself (a plain call every second while work
is in flight), fails those executions, waits for Ray to restart the actor and
compiles a fresh graph. ``compiled=False`` keeps plain actor calls.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import ray
from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError, RuntimeEnvSetupError

from nosd.errors import ModelFailure, NosdError, WorkerUnavailable
from nosd.logs import detached
from nosd.spec import ModelSpec
from nosd.worker import Work, Worker

log = logging.getLogger("nosd.replica")
Outputs = dict[str, Any]
DIED = "the model's worker died and is being restarted; retry the request"


def unwrap(e: BaseException) -> NosdError:
    """Ray's wrappers -> our errors: a dead actor is retryable (503), a model exception is a 500."""
    if isinstance(e, RayTaskError):
        cause = e.cause if isinstance(e.cause, Exception) else None
        if isinstance(cause, NosdError):
            return cause
        return ModelFailure(f"model raised {type(cause).__name__ if cause else 'an error'}: {cause or e}")
    if isinstance(e, NosdError):
        return e
    if isinstance(e, RuntimeEnvSetupError):  # not retryable: the model's pip requirements do not install
        return ModelFailure(f"could not build the model's Ray runtime_env: {str(e).strip().splitlines()[-1]}")
    return WorkerUnavailable(DIED)


def runtime_env(spec: ModelSpec, threads: int) -> dict[str, Any]:
    """The worker's Ray runtime_env: its thread count, and its own pip packages in a Ray-built virtualenv
    layered on the daemon's (so nosd and torch are still there, the model's packages only here)."""
    env: dict[str, Any] = {"env_vars": {"OMP_NUM_THREADS": str(threads)}}
    if spec.pip:
        env["pip"] = {"packages": spec.pip, "pip_check": False}
    return env


class RayReplica:
    def __init__(
        self,
        spec: ModelSpec,
        device: str,
        index: int,
        threads: int,
        max_inflight: int,
        compiled: bool,
        num_gpus: float = 0.0,
    ):
        self.name = f"{spec.id}#{index}"
        self.index = index
        self.inflight = 0
        self.info: dict[str, Any] = {}
        self._max_inflight = max_inflight
        self._compiled = compiled
        self._graph: Any = None
        self._broken: asyncio.Future[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._recovery: asyncio.Task[None] | None = None
        res = spec.resources
        self.actor = (
            ray.remote(Worker)
            .options(
                num_cpus=res.num_cpus,
                num_gpus=num_gpus if device == "cuda" else 0,
                max_restarts=-1,
                max_task_retries=0,
                # Replicas of a model go to different nodes where they can (as Ray Serve places them): a node
                # that dies takes one replica, not all.
                scheduling_strategy="SPREAD",
                # Ray's GCS would keep an event record of every batch (up to 100k tasks, ~0.6 kB each): a steady
                # memory climb under load that nosd's own metrics make unnecessary.
                enable_task_events=False,
                runtime_env=runtime_env(spec, threads),
            )
            .remote(spec, device, threads)
        )

    async def start(self) -> None:
        try:
            self.info = await self.actor.ready.remote()
        except Exception as e:
            raise unwrap(e) from None
        if self._compiled:
            self._compile()

    def _compile(self) -> None:
        from ray.dag import InputNode

        with InputNode() as inp:
            node = self.actor.infer.bind(inp)
        self._graph = node.experimental_compile(enable_asyncio=True, _max_inflight_executions=self._max_inflight)
        self._broken = asyncio.get_running_loop().create_future()
        self._watchdog = detached(self._watch(self._broken))

    async def _watch(self, broken: asyncio.Future[None], every_s: float = 1.0) -> None:
        """While executions are in flight, check the actor answers a plain call; if it died, break the graph."""
        while not broken.done():
            await asyncio.sleep(every_s)
            if self.inflight == 0 or broken.done():
                continue
            try:
                await asyncio.wait_for(self.actor.pid.remote(), 10)
            except TimeoutError:
                continue  # busy, not dead
            except RayActorError as e:
                if not broken.done():
                    log.warning("%s: worker is gone (%s)", self.name, type(e).__name__)
                    self._break()

    async def infer(self, requests: list[Work]) -> tuple[list[Outputs | BaseException], float]:
        if self._recovery is not None:
            await asyncio.shield(self._recovery)
        try:
            if self._graph is None:
                return await self.actor.infer.remote(requests)
            return await self._graph_call(requests)
        except RayTaskError as e:
            raise unwrap(e) from None
        except NosdError:
            raise
        except Exception as e:  # a system error: the actor died, the graph is gone
            log.warning("%s: worker failed (%s: %s); waiting for its restart", self.name, type(e).__name__, e)
            self._break()
            raise WorkerUnavailable(DIED) from None

    async def _graph_call(self, requests: list[Work]) -> tuple[list[Outputs | BaseException], float]:
        broken = self._broken
        assert broken is not None
        ref = await self._graph.execute_async(requests)
        result = asyncio.ensure_future(ref)
        await asyncio.wait({result, broken}, return_when=asyncio.FIRST_COMPLETED)
        if not result.done():  # another call found the worker dead; this execution will never resolve
            result.cancel()
            raise WorkerUnavailable(DIED)
        return result.result()

    def _break(self) -> None:
        """The worker died: new batches wait for Ray's restart of it (in place, or on another node)."""
        if self._recovery is not None:
            return
        if self._graph is not None:
            graph, self._graph = self._graph, None
            if self._broken and not self._broken.done():
                self._broken.set_result(None)
            try:
                graph.teardown()
            except Exception as e:
                log.debug("teardown of a broken graph: %s", e)
        self._recovery = detached(self._recover())

    async def _recover(self) -> None:
        """Wait for Ray to restart the actor (the model reloads in its __init__); compile again if compiled."""
        try:
            self.info = await self._ready_again()
            if self._compiled:
                self._compile()
            log.info("%s restarted (pid %s, node %s)", self.name, self.info.get("pid"), self.info.get("node"))
        except Exception as e:
            log.error("%s did not come back: %s", self.name, e)
        finally:
            self._recovery = None

    async def _ready_again(self, patience_s: float = 120.0) -> dict[str, Any]:
        """Ray answers 'unavailable' while it restarts an actor (a lost node takes seconds to be declared dead):
        ask again until the restarted worker answers, or Ray gives the actor up."""
        deadline = time.monotonic() + patience_s
        while True:
            try:
                return await self.actor.ready.remote()
            except ActorUnavailableError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)

    async def forget(self, key: str) -> None:
        try:
            await self.actor.forget.remote(key)
        except Exception as e:  # a dead worker holds no mapping
            log.debug("%s: forget %s: %s", self.name, key, e)

    def kill(self) -> None:
        if self._broken and not self._broken.done():
            self._broken.set_result(None)  # ends the watchdog
        if self._graph is not None:
            try:
                self._graph.teardown()
            except Exception as e:
                log.debug("teardown: %s", e)
            self._graph = None
        ray.kill(self.actor, no_restart=True)
