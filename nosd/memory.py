"""Device memory: totals and usage per device (pynvml on GPU, the OS on CPU), and the budget flag."""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

from nosd.errors import BadRequest

CPU_SHARE = 0.5  # of RAM, by default: the daemon, Ray and the OS need the rest
GPU_SHARE = 0.8
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


@functools.cache
def _gpu() -> Any:
    """NVML, started once per process: nvmlInit costs milliseconds, a reading microseconds, and /metrics and
    the status page read memory on the event loop at every scrape."""
    import pynvml

    pynvml.nvmlInit()
    return pynvml.nvmlDeviceGetHandleByIndex(0)


def _device_memory(device: str) -> tuple[int, int]:
    """(total, used) bytes: pynvml for the first GPU, /proc/meminfo for RAM."""
    if device == "cuda":
        import pynvml

        info = pynvml.nvmlDeviceGetMemoryInfo(_gpu())
        return int(info.total), int(info.used)
    lines = Path("/proc/meminfo").read_text().splitlines()
    kb = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in lines}
    return kb["MemTotal"], kb["MemTotal"] - kb.get("MemAvailable", kb["MemFree"])


def total_bytes(device: str) -> int:
    return _device_memory(device)[0]


def used_bytes(device: str) -> int:
    """What the device reports in use right now (for display; budget decisions use measured profiles)."""
    return _device_memory(device)[1]


def parse_budget(value: str | None, device: str) -> int:
    """``--memory-budget``: a fraction of the device (0.8) or a size (8GB, 512MiB, 123456789)."""
    total = total_bytes(device)
    if value is None:
        return int(total * (GPU_SHARE if device == "cuda" else CPU_SHARE))
    m = re.fullmatch(r"\s*([0-9.]+)\s*([A-Za-z]*)\s*", value)
    if not m or m.group(2).upper() not in _UNITS:
        raise BadRequest(f"--memory-budget {value!r}: give a fraction like 0.8 or a size like 8GB or 512MiB")
    number, unit = float(m.group(1)), m.group(2).upper()
    if not unit and number <= 1:
        return int(total * number)
    return int(number * _UNITS[unit])
