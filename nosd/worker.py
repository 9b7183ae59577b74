"""The Ray actor that holds one replica of a model on its device.

One call = one batch: the batcher sends the inputs of several requests, the
worker collates them, runs the model once under ``torch.inference_mode`` and
splits the outputs back per request, so only small per-request results return.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nosd import engines
from nosd.errors import BadRequest
from nosd.shm import Mappings, ShmRef, ShmWritten
from nosd.spec import ModelSpec
from nosd.weights import local_file

Batch = dict[str, "np.ndarray | list[np.ndarray]"]


@dataclass
class Work:
    """One request as the worker sees it: inputs as arrays or shared-memory references, where outputs go."""

    inputs: dict[str, np.ndarray | ShmRef]
    wanted: list[str] | None = None  # None: every output
    out_refs: dict[str, ShmRef] = field(default_factory=dict)


def resolve(entrypoint: str) -> Any:
    """``module:Class`` or ``path/to/file.py:Class`` -> the class."""
    target, _, attr = entrypoint.rpartition(":")
    if not target or not attr:
        raise ValueError(f"entrypoint {entrypoint!r} must look like 'package.module:Class' or 'file.py:Class'")
    if target.endswith(".py"):
        path = Path(target).resolve()
        name = "nosd_custom_" + path.stem
        module = sys.modules.get(name)
        if module is None:
            spec = importlib.util.spec_from_file_location(name, path)
            if spec is None or spec.loader is None:
                raise ValueError(f"cannot import {path}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
    else:
        module = importlib.import_module(target)
    return getattr(module, attr)


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"


def init_args(spec: ModelSpec) -> dict[str, Any]:
    """The spec's init args, with names of its URL files replaced by their local paths (a miss names the fix)."""
    return {
        k: str(local_file(spec.id, v)) if isinstance(v, str) and v in spec.files else v
        for k, v in spec.init_args.items()
    }


def collate(requests: list[dict[str, np.ndarray]]) -> tuple[Batch, list[int]]:
    """Join requests along the batch dim: one ndarray when shapes agree, else a list of samples."""
    counts = [len(next(iter(r.values()))) if r else 0 for r in requests]
    batch: Batch = {}
    for name in requests[0]:
        parts = [r[name] for r in requests]
        first = parts[0]
        if all(p.dtype == first.dtype and p.shape[1:] == first.shape[1:] for p in parts):
            batch[name] = parts[0] if len(parts) == 1 else np.concatenate(parts)
        else:
            batch[name] = [sample for p in parts for sample in p]
    return batch, counts


def _pad_stack(samples: list[np.ndarray]) -> np.ndarray:
    """Ragged per-sample outputs (detections, masks of different sizes) -> one array, zero-padded on every axis."""
    if not samples:
        return np.zeros((0,), np.float32)
    shape = np.max([s.shape for s in samples], axis=0)
    out = np.zeros((len(samples), *shape), dtype=samples[0].dtype)
    if out.dtype == object:
        out.fill(b"")  # BYTES pad with empty strings, not integer zeros
    for i, s in enumerate(samples):
        out[(i, *(slice(0, d) for d in s.shape))] = s
    return out


def split(outputs: dict[str, Any], counts: list[int]) -> list[dict[str, np.ndarray]]:
    total = sum(counts)
    per_request: list[dict[str, np.ndarray]] = [{} for _ in counts]
    for name, value in outputs.items():
        if len(value) != total:
            raise RuntimeError(f"model returned {len(value)} rows for output '{name}', expected {total}")
        start = 0
        for i, n in enumerate(counts):
            part = value[start : start + n]
            per_request[i][name] = part if isinstance(part, np.ndarray) else _pad_stack(list(part))
            start += n
    return per_request


class Worker:
    """Plain class; the manager wraps it with ``ray.remote`` and the replica's resources.

    The model loads in ``__init__`` so that Ray's automatic restart of a dead
    worker reloads it; a load error is kept and raised by ``ready`` instead of
    killing the actor, so the client gets the message rather than a restart loop.
    """

    def __init__(self, spec: ModelSpec, device: str, threads: int):
        import torch

        from nosd.profile import baseline_rss

        engines.configure(threads)
        self.spec, self.device = spec, device
        self.rss_before_load = baseline_rss()
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        self.threads = threads
        self.shm = Mappings()
        self.model: Any = None
        self.error: Exception | None = None
        t0 = time.perf_counter()
        try:
            self.model = resolve(spec.entrypoint)(device, **init_args(spec))
        except Exception as e:
            self.error = e
        self.info = {
            "pid": os.getpid(),
            "node": _node_id(),
            "threads": threads,
            "load_s": round(time.perf_counter() - t0, 3),
        }

    def ready(self) -> dict[str, Any]:
        if self.error is not None:
            raise self.error
        return self.info

    def describe(self) -> dict[str, str]:
        """What a catalog entry is keyed by, besides the model id."""
        import torch

        from nosd.profile import device_name

        return {"device": device_name(self.device), "torch": torch.__version__}

    def profile(self, seconds: float, sizes: list[int]) -> Any:
        from nosd.profile import measure

        return measure(self.model, self.spec, self.device, self.rss_before_load, seconds, sizes)

    def pid(self) -> int:
        """A plain call the replica's watchdog uses to see the process is alive."""
        return os.getpid()

    def infer(self, works: list[Work]) -> tuple[list[dict[str, Any] | BadRequest], float]:
        """Run one batch; a request whose shared memory is unusable gets its own error, the rest still run."""
        import torch

        t0 = time.perf_counter()
        if torch.get_num_threads() != self.threads:  # a compiled graph calls from its own thread
            torch.set_num_threads(self.threads)
        results: list[dict[str, Any] | BadRequest] = [BadRequest("not run")] * len(works)
        ready: list[tuple[int, dict[str, np.ndarray]]] = []
        for i, w in enumerate(works):
            try:
                ready.append((i, {k: self.shm.read(v) if isinstance(v, ShmRef) else v for k, v in w.inputs.items()}))
            except BadRequest as e:
                results[i] = e
        if ready:
            try:
                outs: list[dict[str, Any] | BadRequest] = list(self._run(ready))
            except BadRequest:  # one request's input the model rejects (an undecodable image): find it, alone
                outs = []
                for one in ready:
                    try:
                        outs += self._run([one])
                    except BadRequest as e:
                        outs.append(e)
            for (i, _), out in zip(ready, outs, strict=True):
                results[i] = out if isinstance(out, BadRequest) else self._place(works[i], out)
        return results, (time.perf_counter() - t0) * 1e3

    def _run(self, ready: list[tuple[int, dict[str, np.ndarray]]]) -> list[dict[str, np.ndarray]]:
        import torch

        batch, counts = collate([inputs for _, inputs in ready])
        with torch.inference_mode():
            return split(self.model(batch), counts)

    def _place(self, work: Work, out: dict[str, np.ndarray]) -> dict[str, Any] | BadRequest:
        """Keep the requested outputs; write those bound to shared memory straight into their regions."""
        placed: dict[str, np.ndarray | ShmWritten] = {}
        try:
            for name in work.wanted or list(out):
                ref = work.out_refs.get(name)
                placed[name] = self.shm.write(ref, out[name], name) if ref else out[name]
        except BadRequest as e:
            return e
        return placed

    def forget(self, key: str) -> None:
        """Unmap a segment whose region was unregistered."""
        self.shm.forget(key)
