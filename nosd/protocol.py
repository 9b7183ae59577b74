"""KServe v2 inference requests and responses, checked against the model's spec.

Tensor bytes are decoded by the one codec (``nosclient.codec``); this module
adds what the codec cannot know: which inputs a model takes, in which datatypes
and shapes, and which outputs the caller asked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from nosclient.codec import decode_tensor, encode_tensor
from nosd.errors import BadRequest
from nosd.spec import ModelSpec, TensorSpec


@dataclass
class InferRequest:
    id: str
    inputs: dict[str, np.ndarray]
    outputs: list[str] | None
    parameters: dict[str, Any]


def _check_shape(spec: TensorSpec, arr: np.ndarray, datatype: str) -> None:
    if datatype == "BYTES":
        if arr.ndim != 1:
            raise BadRequest(
                f"input '{spec.name}': BYTES must have shape [N] (one item per sample), got {list(arr.shape)}"
            )
        return
    if spec.shape is None:
        return
    dims = zip(spec.shape, arr.shape, strict=False)
    ok = len(spec.shape) == arr.ndim and all(want in (-1, got) for want, got in dims)
    if not ok:
        raise BadRequest(f"input '{spec.name}': shape {list(arr.shape)} does not match {spec.shape} (-1 = any size)")


def parse_infer(body: Any, spec: ModelSpec) -> InferRequest:
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a map with an 'inputs' list")
    raw_inputs = body.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise BadRequest("'inputs' must be a non-empty list of tensors")
    inputs: dict[str, np.ndarray] = {}
    for t in raw_inputs:
        name, arr = decode_tensor(t)
        want = spec.input(name)
        if want is None:
            raise BadRequest(f"model '{spec.id}' has no input '{name}'; its inputs are {[i.name for i in spec.inputs]}")
        datatype = t["datatype"]
        if datatype not in want.datatypes:
            raise BadRequest(f"input '{name}' takes datatype {' or '.join(want.datatypes)}, got {datatype}")
        _check_shape(want, arr, datatype)
        if name in inputs:
            raise BadRequest(f"input '{name}' is given twice")
        inputs[name] = arr
    missing = [i.name for i in spec.inputs if i.name not in inputs]
    if missing:
        raise BadRequest(f"missing input(s) {missing} for model '{spec.id}'")
    outputs = body.get("outputs")
    names: list[str] | None = None
    if outputs is not None:
        named = isinstance(outputs, list) and all(
            isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs
        )
        if not named:
            raise BadRequest("'outputs' must be a list of maps with a 'name'")
        names = [o["name"] for o in outputs]
        known = {o.name for o in spec.outputs}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise BadRequest(f"model '{spec.id}' has no output(s) {unknown}; its outputs are {sorted(known)}")
    params = body.get("parameters") or {}
    if not isinstance(params, dict):
        raise BadRequest("'parameters' must be a map")
    rid = body.get("id", "")
    return InferRequest(str(rid) if rid is not None else "", inputs, names, params)


def infer_response(
    spec: ModelSpec, req: InferRequest, outputs: dict[str, np.ndarray], parameters: dict[str, Any], binary: bool
) -> dict[str, Any]:
    wanted = req.outputs or list(outputs)
    return {
        "model_name": spec.id,
        "model_version": "1",
        "id": req.id,
        "outputs": [encode_tensor(name, outputs[name], binary) for name in wanted],
        "parameters": parameters,
    }
