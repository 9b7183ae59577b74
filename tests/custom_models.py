"""A custom model as a user writes one: load in __init__, a batched __call__, a spec on the class."""

from __future__ import annotations

import numpy as np

from nosd.spec import ModelSpec, TensorSpec


class Scaler:
    spec = ModelSpec(
        id="custom/scaler",
        task="custom",
        inputs=[TensorSpec(name="x", datatypes=["FP32"], shape=[-1, 4])],
        outputs=[
            TensorSpec(name="y", datatypes=["FP32"], shape=[-1, 4]),
            TensorSpec(name="pid", datatypes=["INT64"], shape=[-1]),
        ],
        entrypoint="",  # filled in by registration: this file's path and the class name
        init_args={"factor": 3.0},
        max_batch_size=8,
    )

    def __init__(self, device: str, factor: float):
        import os

        self.factor = np.float32(factor)
        self.pid = os.getpid()

    def __call__(self, batch: dict) -> dict:
        x = batch["x"]
        return {"y": x * self.factor, "pid": np.full(len(x), self.pid, dtype=np.int64)}


class Broken:
    spec = ModelSpec(
        id="custom/broken",
        task="custom",
        inputs=[TensorSpec(name="x", datatypes=["FP32"], shape=[-1])],
        outputs=[TensorSpec(name="y", datatypes=["FP32"], shape=[-1])],
        entrypoint="",
    )

    def __init__(self, device: str):
        pass

    def __call__(self, batch: dict) -> dict:
        raise RuntimeError("this model always fails")


class Sleeper:
    """Sleeps x[0] seconds, returns its pid: lets tests hold a request in flight."""

    spec = ModelSpec(
        id="custom/sleeper",
        task="custom",
        inputs=[TensorSpec(name="seconds", datatypes=["FP32"], shape=[-1])],
        outputs=[TensorSpec(name="pid", datatypes=["INT64"], shape=[-1])],
        entrypoint="",
        max_batch_size=1,
    )

    def __init__(self, device: str):
        import os

        self.pid = os.getpid()

    def __call__(self, batch: dict) -> dict:
        import time

        time.sleep(float(batch["seconds"][0]))
        return {"pid": np.full(len(batch["seconds"]), self.pid, dtype=np.int64)}


class Ballast:
    """Holds ``mb`` megabytes of touched memory: a model of known size for budget and eviction tests."""

    def __init__(self, device: str, mb: int):
        self.block = np.ones(mb * 2**20, dtype=np.uint8)

    def __call__(self, batch: dict) -> dict:
        return {"y": batch["x"] + float(self.block[0])}


def _ballast(name: str, mb: int) -> ModelSpec:
    return ModelSpec(
        id=f"custom/{name}",
        task="custom",
        inputs=[TensorSpec(name="x", datatypes=["FP32"], shape=[-1, 4])],
        outputs=[TensorSpec(name="y", datatypes=["FP32"], shape=[-1, 4])],
        entrypoint="",
        init_args={"mb": mb},
        max_batch_size=4,
    )


class Ballast1(Ballast):
    spec = _ballast("ballast1", 150)


class Ballast2(Ballast):
    spec = _ballast("ballast2", 150)


class Ballast3(Ballast):
    spec = _ballast("ballast3", 150)


class BallastHuge(Ballast):
    spec = _ballast("ballast-huge", 600)


class Waiter:
    """Sleeps ``ms`` milliseconds per batch and counts the batches it ran: shows which requests really ran."""

    spec = ModelSpec(
        id="custom/waiter",
        task="custom",
        inputs=[TensorSpec(name="ms", datatypes=["FP32"], shape=[-1])],
        outputs=[
            TensorSpec(name="calls", datatypes=["INT64"], shape=[-1]),
            TensorSpec(name="pid", datatypes=["INT64"], shape=[-1]),
        ],
        entrypoint="",
        max_batch_size=1,
    )

    def __init__(self, device: str):
        import os

        self.pid, self.calls = os.getpid(), 0

    def __call__(self, batch: dict) -> dict:
        import time

        time.sleep(float(batch["ms"].max()) / 1e3)
        self.calls += 1
        n = len(batch["ms"])
        return {"calls": np.full(n, self.calls, dtype=np.int64), "pid": np.full(n, self.pid, dtype=np.int64)}
