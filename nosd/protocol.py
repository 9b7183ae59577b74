"""KServe v2 inference requests and responses, checked against the model's spec.

Three body forms share one path: msgpack (nosd's native), JSON, and JSON with
the binary tensor data extension (a JSON header of ``Inference-Header-Content-Length``
bytes, raw tensor bytes after it: what stock tritonclient sends). A tensor may
instead live in a registered shared-memory region; it then reaches the worker as
a ``ShmRef`` and its bytes never enter this process. Tensor bytes are decoded by
the one codec (``nosclient.codec``); this module adds what the codec cannot
know: which inputs a model takes, in which datatypes and shapes, where outputs go.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from nosclient.codec import (
    BINARY_HEADER,
    DATATYPES,
    JSON,
    MSGPACK,
    datatype_of,
    decode_tensor,
    dumps,
    encode_tensor,
    loads,
    raw_bytes,
    shape_of,
    to_array,
    unpack_bytes,
)
from nosd.errors import BadRequest
from nosd.shm import Registry, ShmRef, ShmWritten, check_overlaps
from nosd.spec import ModelSpec, TensorSpec
from nosd.worker import Work


@dataclass
class Body:
    """A decoded request body: the v2 map, plus the raw bytes after the JSON header (binary extension)."""

    doc: Any
    tail: memoryview | None = None


def decode_body(raw: bytes, content_type: str, header_length: str | None) -> Body:
    if header_length is None:
        return Body(loads(raw, content_type) if raw else {})
    try:
        n = int(header_length)
    except ValueError:
        raise BadRequest(f"{BINARY_HEADER} must be an integer, got {header_length!r}") from None
    if not 0 <= n <= len(raw):
        raise BadRequest(f"{BINARY_HEADER} is {n} but the body has {len(raw)} bytes")
    return Body(loads(raw[:n], JSON), memoryview(raw)[n:])


@dataclass
class InferRequest:
    id: str
    work: Work
    parameters: dict[str, Any]
    binary_outputs: set[str]  # outputs to send as binary data (binary extension)
    timeout_s: float | None = None  # from the ``timeout_ms`` parameter (or the daemon's default)


def _check_shape(spec: TensorSpec, shape: tuple[int, ...], datatype: str) -> None:
    if datatype == "BYTES":
        if len(shape) != 1:
            raise BadRequest(f"input '{spec.name}': BYTES must have shape [N] (one item per sample), got {list(shape)}")
        return
    if spec.shape is None:
        return
    dims = zip(spec.shape, shape, strict=False)
    if len(spec.shape) != len(shape) or not all(want in (-1, got) for want, got in dims):
        raise BadRequest(f"input '{spec.name}': shape {list(shape)} does not match {spec.shape} (-1 = any size)")


def _params(t: dict[str, Any], what: str) -> dict[str, Any]:
    p = t.get("parameters") or {}
    if not isinstance(p, dict):
        raise BadRequest(f"{what}: 'parameters' must be a map")
    return p


class _Tail:
    """Hands out consecutive slices of the binary part, in the order the tensors name them."""

    def __init__(self, tail: memoryview | None):
        self.tail, self.pos = tail, 0

    def take(self, n: Any, name: str) -> memoryview:
        if self.tail is None:
            raise BadRequest(f"input '{name}' has binary_data_size but the request has no {BINARY_HEADER} header")
        if not isinstance(n, int) or n < 0 or self.pos + n > len(self.tail):
            raise BadRequest(f"input '{name}': binary_data_size {n!r} runs past the end of the body")
        part = self.tail[self.pos : self.pos + n]
        self.pos += n
        return part


def _input(
    t: Any, spec: ModelSpec, tail: _Tail, shm: Registry | None, max_elements: int
) -> tuple[str, np.ndarray | ShmRef]:
    if not isinstance(t, dict):
        raise BadRequest("each input must be a map with 'name', 'datatype', 'shape' and 'data'")
    shape = shape_of(t.get("shape"), str(t.get("name")))  # parsed once, checked before any data is decoded
    if (count := math.prod(shape)) > max_elements:
        raise BadRequest(
            f"input '{t.get('name')}' has {count} elements, over this server's limit of {max_elements} "
            "(--max-elements); split the request"
        )
    params = _params(t, f"input '{t.get('name')}'")
    binary_size = params.get("binary_data_size")
    name, datatype = t.get("name"), t.get("datatype")
    want = spec.input(name) if isinstance(name, str) else None
    if want is None:
        raise BadRequest(f"model '{spec.id}' has no input {name!r}; its inputs are {[i.name for i in spec.inputs]}")
    if datatype not in DATATYPES:
        raise BadRequest(f"input '{name}': unknown datatype {datatype!r}; use one of {', '.join(DATATYPES)}")
    if datatype not in want.datatypes:
        raise BadRequest(f"input '{name}' takes datatype {' or '.join(want.datatypes)}, got {datatype!r}")
    if "shared_memory_region" in params:
        if shm is None:
            raise BadRequest("shared memory is disabled on this server (--no-shm); send the data in the body")
        _check_shape(want, shape, datatype)
        return name, shm.ref(params, datatype, shape, f"input '{name}'")
    if binary_size is not None:
        part = tail.take(binary_size, name)
        data: Any = unpack_bytes(part, name) if datatype == "BYTES" else part
        arr = to_array(name, datatype, shape, data)
    else:
        name, arr = decode_tensor(t)
    _check_shape(want, arr.shape, datatype)
    return name, arr


def _timeout(params: dict[str, Any], default_s: float | None) -> float | None:
    ms = params.get("timeout_ms")
    if ms is None:
        return default_s
    if not isinstance(ms, (int, float)) or isinstance(ms, bool) or not 0 < ms <= 86_400_000:
        raise BadRequest(f"parameters.timeout_ms must be a positive number of milliseconds, got {ms!r}")
    return ms / 1e3


def parse_infer(
    body: Body,
    spec: ModelSpec,
    shm: Registry | None,
    max_elements: int = 2**31,
    default_timeout_s: float | None = None,
) -> InferRequest:
    doc = body.doc
    if not isinstance(doc, dict):
        raise BadRequest("the request body must be a map with an 'inputs' list")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise BadRequest("'inputs' must be a non-empty list of tensors")
    tail = _Tail(body.tail)
    inputs: dict[str, np.ndarray | ShmRef] = {}
    for t in raw_inputs:
        name, value = _input(t, spec, tail, shm, max_elements)
        if name in inputs:
            raise BadRequest(f"input '{name}' is given twice")
        inputs[name] = value
    missing = [i.name for i in spec.inputs if i.name not in inputs]
    if missing:
        raise BadRequest(f"missing input(s) {missing} for model '{spec.id}'")

    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise BadRequest("'parameters' must be a map")
    outputs = doc.get("outputs")
    wanted: list[str] | None = None
    out_refs: dict[str, ShmRef] = {}
    binary: set[str] = set()
    if outputs is not None:
        if not isinstance(outputs, list) or not all(
            isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs
        ):
            raise BadRequest("'outputs' must be a list of maps with a 'name'")
        known = {o.name: o for o in spec.outputs}
        wanted = [o["name"] for o in outputs]
        unknown = [n for n in wanted if n not in known]
        if unknown:
            raise BadRequest(f"model '{spec.id}' has no output(s) {unknown}; its outputs are {sorted(known)}")
        for o in outputs:
            op = _params(o, f"output '{o['name']}'")
            if "shared_memory_region" in op:
                if shm is None:
                    raise BadRequest("shared memory is disabled on this server (--no-shm)")
                out_refs[o["name"]] = shm.ref(op, known[o["name"]].datatypes[0], None, f"output '{o['name']}'")
            elif op.get("binary_data", body.tail is not None or params.get("binary_data_output", False)):
                binary.add(o["name"])
    elif params.get("binary_data_output") or body.tail is not None:
        binary = {o.name for o in spec.outputs}
    refs = [(n, r) for n, r in inputs.items() if isinstance(r, ShmRef)] + list(out_refs.items())
    check_overlaps(refs, set(out_refs))
    rid = doc.get("id", "")
    timeout_s = _timeout(params, default_timeout_s)
    return InferRequest(str(rid) if rid is not None else "", Work(inputs, wanted, out_refs), params, binary, timeout_s)


def encode_response(
    spec: ModelSpec, req: InferRequest, outputs: dict[str, Any], parameters: dict[str, Any], content_type: str
) -> tuple[bytes, str, dict[str, str]]:
    """(body, content type, extra headers). Binary-extension outputs go after a JSON header."""
    tensors: list[dict[str, Any]] = []
    tail: list[bytes | memoryview] = []
    for name, value in outputs.items():
        if isinstance(value, ShmWritten):
            r = value.ref
            tensors.append(
                {
                    "name": name,
                    "datatype": value.datatype,
                    "shape": list(value.shape),
                    "parameters": {"shared_memory_region": r.region, "shared_memory_byte_size": r.nbytes},
                }
            )
        elif content_type == JSON and name in req.binary_outputs:
            data = raw_bytes(value)
            params = {"binary_data_size": len(data)}
            tensors.append(
                {"name": name, "datatype": datatype_of(value), "shape": list(value.shape), "parameters": params}
            )
            tail.append(data)
        else:
            tensors.append(encode_tensor(name, value, binary=content_type == MSGPACK))
    doc = {"model_name": spec.id, "model_version": "1", "id": req.id, "outputs": tensors, "parameters": parameters}
    head = dumps(doc, content_type)
    if not tail:
        return head, content_type, {}
    return b"".join([head, *tail]), "application/octet-stream", {BINARY_HEADER: str(len(head))}
