"""Execution engines a worker runs models with: PyTorch, and ONNX Runtime beside it.

Both run in the same Ray ``Worker`` actor, batched by the same batcher; the
engine only decides how the model computes. A worker sets its thread count
once (``configure``) and every engine in that process uses it, so a replica
never takes more cores than the manager gave it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

_THREADS = 1


def configure(threads: int) -> None:
    """Called by the worker before the model loads."""
    global _THREADS
    import torch

    _THREADS = threads
    torch.set_num_threads(threads)


def onnx_session(path: str | Path, device: str) -> Any:
    """An ONNX Runtime session with this worker's threads; CUDA first on a GPU replica when ORT has it."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = _THREADS
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # warnings about unused initializers are noise to a server's log
    providers = ["CPUExecutionProvider"]
    if device == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    return ort.InferenceSession(str(path), sess_options=opts, providers=providers)


class OnnxModel:
    """Any ``.onnx`` file as a nosd model: inputs and outputs by the graph's own names, batch on axis 0.

    Register it from a config file with ``entrypoint: nosd.engines:OnnxModel``
    and ``init_args: {path: model.onnx}`` (a name in the spec's ``files`` is
    replaced by its local path in ``$NOSD_HOME``).
    """

    def __init__(self, device: str, path: str):
        self.session = onnx_session(path, device)
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        feed = {name: np.ascontiguousarray(batch[name]) for name in self.inputs}
        return dict(zip(self.outputs, self.session.run(self.outputs, feed), strict=True))
