"""``nosd/identity``: returns its input. Transports and overhead are measured with it."""

from __future__ import annotations

import numpy as np

from nosd.spec import NUMERIC, ModelSpec, Resources, TensorSpec

ANY = ["FP32", *(d for d in NUMERIC if d != "FP32")]


class Identity:
    def __init__(self, device: str):
        self.device = device

    def __call__(self, batch: dict[str, np.ndarray | list[np.ndarray]]) -> dict[str, np.ndarray | list[np.ndarray]]:
        return {"y": batch["x"]}


SPECS = [
    ModelSpec(
        id="nosd/identity",
        task="diagnostic",
        description="Returns input x as output y, batched like any model.",
        inputs=[TensorSpec(name="x", datatypes=ANY, shape=None)],
        outputs=[TensorSpec(name="y", datatypes=ANY, shape=None, like="x")],
        entrypoint="nosd.hub.identity:Identity",
        max_batch_size=64,
        max_wait_ms=1.0,
        platform="python",
        resources=Resources(num_cpus=0.1, threads=1),
    )
]
