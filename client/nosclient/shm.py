"""The client's same-host transport: tensors in POSIX shared memory, only control messages over HTTP.

Regions come from the standard library (``multiprocessing.shared_memory``):
mode 0600, no extra dependency, and its resource tracker, a separate process,
unlinks every segment this process created when it exits, even by SIGKILL. The
server notices the segment is gone and drops its registration. Regions are
pooled and registered once, then reused by every call; ``close`` (and interpreter
exit) unregisters and unlinks them.
"""

from __future__ import annotations

import math
import os
import secrets
from dataclasses import dataclass, field
from multiprocessing import shared_memory
from typing import Any

import numpy as np

from nosclient.codec import DATATYPES, datatype_of

MIN_REGION = 1 << 16


@dataclass
class Segment:
    mem: shared_memory.SharedMemory
    size: int
    registered: bool = False

    @property
    def key(self) -> str:
        return "/" + self.mem.name.lstrip("/")

    @property
    def region(self) -> str:
        return self.mem.name.lstrip("/")


class Pool:
    """Free segments by size; a lease is exclusive until released."""

    def __init__(self) -> None:
        self._prefix = f"nosd_{os.getpid()}_{secrets.token_hex(3)}_"
        self._count = 0
        self._free: list[Segment] = []
        self.all: list[Segment] = []

    def acquire(self, nbytes: int) -> tuple[Segment, bool]:
        """(segment, is_new); a segment must be registered with the server before its first use."""
        fits = [s for s in self._free if nbytes <= s.size <= max(4 * nbytes, MIN_REGION)]
        if fits:
            seg = min(fits, key=lambda s: s.size)
            self._free.remove(seg)
            return seg, False
        size = max(MIN_REGION, 1 << max(0, nbytes - 1).bit_length())
        self._count += 1
        seg = Segment(shared_memory.SharedMemory(self._prefix + str(self._count), create=True, size=size), size)
        self.all.append(seg)
        return seg, True

    def release(self, segs: list[Segment]) -> None:
        self._free.extend(segs)

    def close(self) -> list[Segment]:
        """Unlink every segment; returns them so the caller can unregister their regions."""
        segs, self.all, self._free = self.all, [], []
        for s in segs:
            try:
                s.mem.close()
            except BufferError:  # a caller still holds a view; the mapping goes with it
                pass
            try:
                s.mem.unlink()
            except FileNotFoundError:
                pass
        return segs


@dataclass
class Plan:
    """One request laid out in shared memory: the v2 body, its leases and where each output lands."""

    body: dict[str, Any]
    leases: list[Segment]
    new: list[Segment]
    outputs: dict[str, Segment] = field(default_factory=dict)


def output_bytes(spec: dict[str, Any], arrays: dict[str, np.ndarray]) -> int | None:
    """Bytes an output will take, when metadata says so (``like`` an input, or fixed dims past the batch dim)."""
    like = spec.get("like")
    if like in arrays:
        return arrays[like].nbytes
    shape, types = spec.get("shape"), spec.get("datatypes") or [spec.get("datatype")]
    if len(types) != 1 or types[0] == "BYTES" or not shape or any(d < 0 for d in shape[1:]) or not arrays:
        return None
    n = next(iter(arrays.values())).shape[0]
    return n * math.prod(shape[1:]) * DATATYPES[types[0]].itemsize


def plan(pool: Pool, inputs: dict[str, np.ndarray], meta: dict[str, Any], wanted: list[str] | None) -> Plan:
    """Copy inputs into leased regions (the one copy a caller's array needs) and bind outputs to regions."""
    tensors: list[dict[str, Any]] = []
    leases: list[Segment] = []

    def lease(nbytes: int) -> Segment:
        seg, _ = pool.acquire(nbytes)
        leases.append(seg)
        return seg

    for name, arr in inputs.items():
        datatype = datatype_of(arr)
        if datatype == "BYTES":
            raise ValueError(f"input '{name}': BYTES tensors travel in the body; use transport='http'")
        seg = lease(max(arr.nbytes, 1))
        dst = np.ndarray(arr.shape, dtype=arr.dtype.newbyteorder("<"), buffer=seg.mem.buf)
        np.copyto(dst, arr)
        params = {"shared_memory_region": seg.region, "shared_memory_byte_size": arr.nbytes}
        tensors.append({"name": name, "datatype": datatype, "shape": list(arr.shape), "parameters": params})
    outs, bound = [], {}
    for spec in meta["outputs"]:
        if wanted is not None and spec["name"] not in wanted:
            continue
        nbytes = output_bytes(spec, inputs)
        if nbytes is None:
            outs.append({"name": spec["name"]})
            continue
        seg = lease(max(nbytes, 1))
        bound[spec["name"]] = seg
        outs.append(
            {
                "name": spec["name"],
                "parameters": {"shared_memory_region": seg.region, "shared_memory_byte_size": nbytes},
            }
        )
    return Plan({"inputs": tensors, "outputs": outs}, leases, [s for s in leases if not s.registered], bound)


def read_output(seg: Segment, t: dict[str, Any], copy: bool = True) -> np.ndarray:
    """An output in its region: a copy, or (``copy=False``) a read-only view valid until the client's next call."""
    dtype = DATATYPES[t["datatype"]]
    view = np.frombuffer(seg.mem.buf, dtype=dtype, count=math.prod(t["shape"])).reshape(t["shape"])
    if copy:
        return view.copy()
    view.flags.writeable = False
    return view
