"""POSIX shared-memory regions (the v2 system shared-memory extension): register, check bounds, map, clean up.

The daemon only checks: a region's key is a plain POSIX name, the segment exists
and is large enough. The bytes are touched only by the workers, which map the
segment themselves (``Mappings``), read inputs straight out of it and write
outputs straight into it: tensor bytes never pass through HTTP, the event loop
or Ray's object store. nosd never unlinks a segment: it did not create them.
"""

from __future__ import annotations

import math
import mmap
import os
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import posix_ipc

from nosclient.codec import DATATYPES
from nosd.errors import BadRequest

_KEY = re.compile(r"^/?[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")


def normalize_key(key: Any) -> str:
    """A POSIX shm name: one component, no path tricks. Returns it with its leading slash."""
    if not isinstance(key, str) or not _KEY.match(key) or ".." in key:
        raise BadRequest(f"shared-memory key {key!r} is not a POSIX name like '/my_region' (letters, digits, ._-)")
    return key if key.startswith("/") else "/" + key


def segment_size(key: str) -> int:
    try:
        seg = posix_ipc.SharedMemory(key)
    except posix_ipc.ExistentialError:
        raise BadRequest(f"no shared-memory segment named {key!r} on the server's host") from None
    except OSError as e:
        raise BadRequest(f"cannot open shared-memory segment {key!r}: {e}") from None
    try:
        return os.fstat(seg.fd).st_size
    finally:
        seg.close_fd()


def segment_exists(key: str) -> bool:
    return os.path.exists("/dev/shm" + key)


@dataclass(frozen=True)
class Region:
    name: str
    key: str
    offset: int
    byte_size: int

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "key": self.key, "offset": self.offset, "byte_size": self.byte_size}


@dataclass(frozen=True)
class ShmRef:
    """Where one tensor lives: sent to the worker instead of the bytes."""

    region: str
    key: str
    offset: int  # absolute, in the segment
    nbytes: int
    datatype: str
    shape: tuple[int, ...] | None = None  # None for an output: its shape is known after compute


@dataclass(frozen=True)
class ShmWritten:
    """What the worker returns for an output it wrote into a region."""

    ref: ShmRef
    shape: tuple[int, ...]
    datatype: str


def _int(params: dict[str, Any], name: str, default: int | None = None) -> int:
    v = params.get(name, default)
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise BadRequest(f"parameter '{name}' must be a non-negative integer, got {v!r}")
    return v


class Registry:
    """The daemon's table of registered regions (name -> Region)."""

    def __init__(self) -> None:
        self.regions: dict[str, Region] = {}

    def register(self, name: str, body: Any) -> Region:
        if not isinstance(body, dict):
            raise BadRequest("register takes a body {'key', 'offset', 'byte_size'}")
        if name in self.regions:
            raise BadRequest(f"shared-memory region '{name}' is already registered; unregister it first")
        key = normalize_key(body.get("key"))
        offset, byte_size = _int(body, "offset", 0), _int(body, "byte_size")
        size = segment_size(key)
        if offset + byte_size > size:
            raise BadRequest(
                f"region '{name}': offset {offset} + byte_size {byte_size} is past the end of segment {key!r} "
                f"({size} bytes)"
            )
        region = Region(name, key, offset, byte_size)
        self.regions[name] = region
        return region

    def unregister(self, name: str | None = None) -> list[Region]:
        names = list(self.regions) if name is None else [name] if name in self.regions else []
        return [self.regions.pop(n) for n in names]

    def status(self, name: str | None = None) -> list[dict[str, Any]]:
        if name is not None and name not in self.regions:
            raise BadRequest(f"no shared-memory region named '{name}' is registered")
        return [r.status() for n, r in self.regions.items() if name in (None, n)]

    def vanished(self) -> list[Region]:
        """Regions whose segment was unlinked (e.g. by a dead client's reaper): drop them."""
        gone = [r for r in self.regions.values() if not segment_exists(r.key)]
        for r in gone:
            self.regions.pop(r.name, None)
        return gone

    def ref(self, params: dict[str, Any], datatype: str, shape: tuple[int, ...] | None, what: str) -> ShmRef:
        """Resolve a tensor's shared_memory_* parameters, checking them against the region's bounds."""
        name = params.get("shared_memory_region")
        region = self.regions.get(name) if isinstance(name, str) else None
        if region is None:
            raise BadRequest(f"{what}: shared-memory region {name!r} is not registered")
        size = _int(params, "shared_memory_byte_size")
        offset = _int(params, "shared_memory_offset", 0)
        if offset + size > region.byte_size:
            raise BadRequest(
                f"{what}: offset {offset} + byte_size {size} is past the end of region '{name}' "
                f"({region.byte_size} bytes)"
            )
        if shape is not None:
            if datatype == "BYTES":
                raise BadRequest(f"{what}: BYTES tensors cannot travel in shared memory; send them in the body")
            need = math.prod(shape) * DATATYPES[datatype].itemsize
            if need != size:
                raise BadRequest(
                    f"{what}: shape {list(shape)} of {datatype} is {need} bytes but shared_memory_byte_size is {size}"
                )
        return ShmRef(region.name, region.key, region.offset + offset, size, datatype, shape)


def check_overlaps(refs: list[tuple[str, ShmRef]], outputs: set[str]) -> None:
    """An output region may not overlap any other tensor of the same request (reads would see its writes)."""
    for i, (a_name, a) in enumerate(refs):
        for b_name, b in refs[i + 1 :]:
            if a_name not in outputs and b_name not in outputs:
                continue  # two inputs may share bytes
            if a.key == b.key and a.offset < b.offset + b.nbytes and b.offset < a.offset + a.nbytes:
                raise BadRequest(f"'{a_name}' and '{b_name}' overlap in shared memory {a.key!r}; use disjoint ranges")


class Mappings:
    """The worker's cache of mapped segments (one mmap per key, reused across requests)."""

    def __init__(self) -> None:
        self._maps: dict[str, tuple[int, mmap.mmap]] = {}

    def _map(self, ref: ShmRef) -> mmap.mmap:
        fd_map = self._maps.get(ref.key)
        if fd_map is not None:
            fd, mm = fd_map
            try:
                size = os.fstat(fd).st_size  # a shrunk segment would SIGBUS on access: check first
            except OSError:
                size = -1
            if size >= ref.offset + ref.nbytes and len(mm) >= ref.offset + ref.nbytes:
                return mm
            self.forget(ref.key)
        try:
            seg = posix_ipc.SharedMemory(ref.key)
        except posix_ipc.ExistentialError:
            raise BadRequest(f"shared-memory segment {ref.key!r} of region '{ref.region}' no longer exists") from None
        size = os.fstat(seg.fd).st_size
        if size < ref.offset + ref.nbytes:
            seg.close_fd()
            raise BadRequest(f"shared-memory segment {ref.key!r} shrank to {size} bytes under region '{ref.region}'")
        mm = mmap.mmap(seg.fd, size)
        self._maps[ref.key] = (seg.fd, mm)
        return mm

    def read(self, ref: ShmRef) -> np.ndarray:
        """A zero-copy, read-only view of an input in its region."""
        assert ref.shape is not None
        mm = self._map(ref)
        arr = np.frombuffer(mm, dtype=DATATYPES[ref.datatype], count=math.prod(ref.shape), offset=ref.offset)
        return arr.reshape(ref.shape)

    def write(self, ref: ShmRef, arr: np.ndarray, name: str) -> ShmWritten:
        from nosclient.codec import datatype_of

        arr = np.ascontiguousarray(arr)
        if arr.nbytes > ref.nbytes:
            raise BadRequest(
                f"output '{name}' is {arr.nbytes} bytes ({list(arr.shape)}) but its region gives "
                f"shared_memory_byte_size {ref.nbytes}"
            )
        mm = self._map(ref)
        dst = np.frombuffer(mm, dtype=np.uint8, count=arr.nbytes, offset=ref.offset)
        dst[:] = arr.reshape(-1).view(np.uint8)
        return ShmWritten(ref, tuple(arr.shape), datatype_of(arr))

    def forget(self, key: str) -> None:
        fd_map = self._maps.pop(key, None)
        if fd_map is not None:
            fd, mm = fd_map
            try:
                mm.close()
            except BufferError:  # a view still points into it; it is released with the view
                pass
            os.close(fd)

    def keys(self) -> list[str]:
        return list(self._maps)
