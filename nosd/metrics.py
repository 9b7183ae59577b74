"""Prometheus metrics (``GET /metrics``) and the recent-throughput numbers the status page shows.

Names follow Triton's ``nv_inference_*`` family where one exists (docs/operations.md has the mapping);
durations are in seconds, as Prometheus prefers, where Triton counts microseconds. Counters and histograms are
updated on the request path; gauges (queue depth, replicas, memory, shm regions) are read from the manager at
scrape time, so they cost nothing between scrapes. Each app has its own registry: several daemons in one
process (tests) never share series.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from nosd.manager import ModelManager
    from nosd.shm import Registry

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Rate:
    """Samples completed per second over the last ``window_s`` (per-second buckets, O(1) per request)."""

    def __init__(self, window_s: int = 10):
        self.window_s = window_s
        self.buckets: deque[list[float]] = deque()  # [second, samples]

    def add(self, n: int, now: float | None = None) -> None:
        sec = int(now if now is not None else time.monotonic())
        if self.buckets and self.buckets[-1][0] == sec:
            self.buckets[-1][1] += n
        else:
            self.buckets.append([sec, n])
        while self.buckets and self.buckets[0][0] <= sec - self.window_s:
            self.buckets.popleft()

    def per_s(self, now: float | None = None) -> float:
        sec = int(now if now is not None else time.monotonic())
        return sum(n for s, n in self.buckets if s > sec - self.window_s) / self.window_s


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "nosd_inference_requests", "Inference requests by model and HTTP status", ["model", "status"], registry=r
        )
        self.samples = Counter("nosd_inference_samples", "Samples (batch rows) inferred", ["model"], registry=r)
        self.request_s = Histogram(
            "nosd_inference_request_duration_seconds",
            "Whole request, received to answered",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_s = Histogram(
            "nosd_inference_queue_duration_seconds",
            "Time in the model's queue",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.compute_s = Histogram(
            "nosd_inference_compute_duration_seconds",
            "Worker time of the batch the request was in",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "nosd_inference_batch_size", "Samples per dispatched batch", ["model"], buckets=BATCH_BUCKETS, registry=r
        )
        self.rates: dict[str, Rate] = {}

    def watch(self, manager: ModelManager, shm: Registry | None) -> None:
        """Gauges read at scrape time; the manager reports each dispatched batch's size."""
        self.registry.register(_Gauges(manager, shm))
        manager.on_batch = lambda model, n: self.batch_size.labels(model).observe(n)

    def done(self, model: str, status: int, seconds: float, params: dict[str, Any] | None, n: int) -> None:
        self.requests.labels(model, str(status)).inc()
        self.request_s.labels(model).observe(seconds)
        if params:
            self.samples.labels(model).inc(n)
            self.rates.setdefault(model, Rate()).add(n)
            self.queue_s.labels(model).observe(params["queue_ms"] / 1e3)
            self.compute_s.labels(model).observe(params["compute_ms"] / 1e3)

    def throughput(self, model: str) -> float:
        rate = self.rates.get(model)
        return rate.per_s() if rate else 0.0


class _Gauges(Collector):
    def __init__(self, manager: ModelManager, shm: Registry | None):
        self.manager, self.shm = manager, shm

    def collect(self) -> Iterator[GaugeMetricFamily]:
        queue = GaugeMetricFamily(
            "nosd_inference_queue_depth", "Requests waiting in the model's queue", labels=["model"]
        )
        replicas = GaugeMetricFamily("nosd_model_replicas", "Running replicas of each loaded model", labels=["model"])
        model_mem = GaugeMetricFamily(
            "nosd_model_memory_bytes", "Measured memory of each loaded model", labels=["model"]
        )
        loaded = 0
        for model_id, m in self.manager.models.items():
            if m.state != "ready":
                continue
            loaded += 1
            queue.add_metric([model_id], m.batcher.queued_requests if m.batcher else 0)
            replicas.add_metric([model_id], len(m.replicas))
            model_mem.add_metric([model_id], m.memory_bytes)
        yield queue
        yield replicas
        yield model_mem
        yield GaugeMetricFamily("nosd_models_loaded", "Models loaded and ready", value=loaded)
        mem = self.manager.memory()
        device = [mem["device"]]
        for name, key, text in (
            ("nosd_memory_total_bytes", "total_bytes", "Device memory"),
            ("nosd_memory_used_bytes", "device_used_bytes", "Device memory in use (all processes)"),
            ("nosd_memory_budget_bytes", "budget_bytes", "Memory budget for models"),
            ("nosd_memory_models_bytes", "models_bytes", "Measured memory of the loaded models"),
        ):
            g = GaugeMetricFamily(name, text, labels=["device"])
            g.add_metric(device, mem[key])
            yield g
        regions = len(self.shm.regions) if self.shm else 0
        yield GaugeMetricFamily("nosd_shm_regions", "Registered system shared-memory regions", value=regions)
