"""Model profiles: measured once per (model, device, torch version), kept in a catalog under ``$NOSD_HOME``.

Measured in the process that holds the model (the worker, or ``nosd profile``):
parameter bytes, memory (GPU: peak allocated over load plus a max-batch forward;
CPU: resident-memory growth of the process), FLOPs per sample
(``torch.utils.flop_counter``), and throughput/latency over a batch-size sweep.
The best batch size is the smallest reaching ~95% of peak throughput within the
model's latency target; the batcher uses it unless the user set a batch size.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from nosclient.codec import DATATYPES
from nosd.spec import ModelSpec

SWEEP = [1, 2, 4, 8, 16, 32]


class SweepPoint(BaseModel):
    batch_size: int
    samples_per_s: float
    latency_ms: float


class Profile(BaseModel):
    model: str
    device: str
    torch: str
    param_bytes: int
    memory_bytes: int
    flops_per_sample: float
    best_batch_size: int
    sweep: list[SweepPoint]
    measured_at: str


def home() -> Path:
    return Path(os.environ.get("NOSD_HOME") or Path.home() / ".nosd")


def catalog_key(model: str, device: str, torch: str) -> str:
    return f"{model}|{device}|{torch}"


def load_catalog() -> dict[str, Profile]:
    path = home() / "catalog.json"
    if not path.exists():
        return {}
    try:
        return {k: Profile(**v) for k, v in json.loads(path.read_text()).items()}
    except (ValueError, TypeError):  # a damaged catalog is re-measured, not fatal
        return {}


def save_profile(p: Profile) -> None:
    """Write the catalog atomically: a crash mid-write leaves the old file."""
    path = home() / "catalog.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    entries = {k: v.model_dump() for k, v in load_catalog().items()}
    entries[catalog_key(p.model, p.device, p.torch)] = p.model_dump()
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(entries, indent=1))
    tmp.replace(path)


def device_name(device: str) -> str:
    import torch

    if device == "cuda":
        return torch.cuda.get_device_name()
    name = platform.processor() or "cpu"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [
            line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")
        ]
        name = names[0] if names else name
    return f"cpu: {name} x{os.cpu_count()}"


def rss_bytes() -> int:
    """Resident set size now (Linux /proc; falls back to the peak on other systems)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return peak_rss_bytes()


def baseline_rss() -> int:
    """Resident memory before a model loads, with torch and the FLOP counter already imported (not the model's)."""
    import torch.utils.flop_counter  # noqa: F401

    return rss_bytes()


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def example(spec: ModelSpec, n: int) -> dict[str, np.ndarray]:
    """A batch of n samples that fits the spec: random 224x224 RGB for images, else the spec's shape (-1 -> 8)."""
    rng = np.random.default_rng(0)
    out = {}
    for t in spec.inputs:
        if t.name == "images" and "UINT8" in t.datatypes:
            out[t.name] = rng.integers(0, 256, (n, 224, 224, 3), dtype=np.uint8)
            continue
        dtype = DATATYPES[next(d for d in t.datatypes if d != "BYTES")]
        dims = [8 if d < 0 else d for d in (t.shape or [-1, 8])[1:]]
        out[t.name] = (rng.random((n, *dims)) * 10).astype(dtype)
    return out


def param_bytes(model: Any) -> int:
    """Bytes of every torch parameter and buffer reachable from the model object's attributes."""
    import torch

    seen: set[int] = set()
    total = 0
    for value in vars(model).values() if hasattr(model, "__dict__") else []:
        modules = [value] if isinstance(value, torch.nn.Module) else []
        for m in modules:
            for t in [*m.parameters(), *m.buffers()]:
                if id(t) not in seen:
                    seen.add(id(t))
                    total += t.numel() * t.element_size()
    return total


def best_batch_size(sweep: list[SweepPoint], latency_target_ms: float) -> int:
    within = [p for p in sweep if p.latency_ms <= latency_target_ms] or sweep[:1]
    peak = max(p.samples_per_s for p in within)
    return min(p.batch_size for p in within if p.samples_per_s >= 0.95 * peak)


def measure(
    model: Callable[[dict[str, Any]], Any],
    spec: ModelSpec,
    device: str,
    rss_before_load: int,
    seconds: float,
    sizes: Iterable[int] = SWEEP,
    progress: Callable[[Iterable[int]], Iterable[int]] = lambda x: x,
) -> Profile:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    sizes = [b for b in sizes if b <= (spec.max_batch_size if "max_batch_size" in spec.model_fields_set else 32)]
    with torch.inference_mode():
        with FlopCounterMode(display=False) as flops:
            model(example(spec, 1))
        model(example(spec, max(sizes)))  # the largest batch sets the memory peak
        memory = torch.cuda.max_memory_allocated() if device == "cuda" else max(0, peak_rss_bytes() - rss_before_load)
        sweep = []
        for bs in progress(sizes):
            batch = example(spec, bs)
            model(batch)
            n, t0 = 0, time.perf_counter()
            while n < 2 or time.perf_counter() - t0 < seconds:
                model(batch)
                n += 1
            elapsed = time.perf_counter() - t0
            sweep.append(SweepPoint(batch_size=bs, samples_per_s=n * bs / elapsed, latency_ms=1e3 * elapsed / n))
    return Profile(
        model=spec.id,
        device=device_name(device),
        torch=torch.__version__,
        param_bytes=param_bytes(model),
        memory_bytes=int(memory),
        flops_per_sample=float(flops.get_total_flops()),
        best_batch_size=best_batch_size(sweep, spec.latency_target_ms),
        sweep=sweep,
        measured_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
