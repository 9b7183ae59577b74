"""The one tensor codec: KServe v2 tensor maps <-> numpy, in msgpack and JSON.

The server imports this module too, so client and server can never disagree on
the wire format. msgpack carries numeric data as ONE bin of raw little-endian
C-order bytes (decoded zero-copy with ``np.frombuffer``); BYTES data is an array
of bin. JSON carries plain v2: a flat row-major list (BYTES as UTF-8 strings).
"""

from __future__ import annotations

import json
import math
from typing import Any

import msgpack
import numpy as np

MSGPACK = "application/msgpack"
JSON = "application/json"

DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}
_BY_KIND = {(dt.kind, dt.itemsize): name for name, dt in DATATYPES.items() if name != "BYTES"}


class TensorError(ValueError):
    """A tensor on the wire does not match its own datatype/shape declaration."""


def datatype_of(arr: np.ndarray) -> str:
    """The v2 datatype name of a numpy array (object/str/bytes arrays are BYTES)."""
    if arr.dtype.kind in "OSU":
        return "BYTES"
    name = _BY_KIND.get((arr.dtype.kind, arr.dtype.itemsize))
    if name is None:
        raise TensorError(f"numpy dtype {arr.dtype} has no KServe v2 datatype")
    return name


def shape_of(value: Any, name: str) -> tuple[int, ...]:
    """A wire shape, checked: a list of non-negative integers."""
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value
    ):
        raise TensorError(f"tensor '{name}': 'shape' must be a list of non-negative integers, got {value!r}")
    return tuple(value)


def decode_tensor(t: Any) -> tuple[str, np.ndarray]:
    """One wire tensor map -> (name, array). Numeric msgpack data stays a read-only view of the body."""
    if not isinstance(t, dict):
        raise TensorError("each tensor must be a map with 'name', 'datatype', 'shape' and 'data'")
    name = t.get("name")
    if not isinstance(name, str) or not name:
        raise TensorError("tensor is missing its 'name' (a non-empty string)")
    datatype = t.get("datatype")
    if datatype not in DATATYPES:
        raise TensorError(f"tensor '{name}': unknown datatype {datatype!r}; use one of {', '.join(DATATYPES)}")
    shape = shape_of(t.get("shape"), name)
    if "data" not in t:
        raise TensorError(f"tensor '{name}' has no 'data'")
    return name, to_array(name, datatype, shape, t["data"])


def to_array(name: str, datatype: str, shape: tuple[int, ...], data: Any) -> np.ndarray:
    count = math.prod(shape)
    if datatype == "BYTES":
        if not isinstance(data, list):
            raise TensorError(f"tensor '{name}': BYTES data must be an array of bin (msgpack) or strings (JSON)")
        if len(data) != count:
            raise TensorError(f"tensor '{name}': shape {list(shape)} needs {count} elements, data has {len(data)}")
        out = np.empty(count, dtype=object)
        for i, item in enumerate(data):
            if isinstance(item, str):
                item = item.encode()
            elif not isinstance(item, bytes):
                raise TensorError(f"tensor '{name}': BYTES element {i} is {type(item).__name__}, not bytes")
            out[i] = item
        return out.reshape(shape)
    dtype = DATATYPES[datatype]
    if isinstance(data, (bytes, bytearray, memoryview)):
        nbytes = len(data)
        if nbytes != count * dtype.itemsize:
            raise TensorError(
                f"tensor '{name}': shape {list(shape)} of {datatype} needs {count * dtype.itemsize} bytes, "
                f"data has {nbytes}"
            )
        return np.frombuffer(data, dtype=dtype).reshape(shape)
    if isinstance(data, list):
        try:
            arr = np.asarray(data, dtype=dtype).reshape(-1)
        except (TypeError, ValueError, OverflowError) as e:
            raise TensorError(f"tensor '{name}': data is not a flat list of {datatype} values ({e})") from None
        if arr.size != count:
            raise TensorError(f"tensor '{name}': shape {list(shape)} needs {count} elements, data has {arr.size}")
        return arr.reshape(shape)
    raise TensorError(f"tensor '{name}': 'data' must be bin (msgpack) or a flat list (JSON)")


def encode_tensor(name: str, arr: np.ndarray, binary: bool) -> dict[str, Any]:
    """Array -> wire tensor map. ``binary`` (msgpack) ships numeric data as one bin, else a flat list."""
    datatype = datatype_of(arr)
    shape = list(arr.shape)
    if datatype == "BYTES":
        items = [x if isinstance(x, bytes) else str(x).encode() for x in arr.reshape(-1)]
        data: Any = items if binary else [x.decode("utf-8", "replace") for x in items]
    elif binary:
        data = raw_bytes(arr)  # no copy for a contiguous little-endian array
    else:
        data = arr.reshape(-1).tolist()
    return {"name": name, "datatype": datatype, "shape": shape, "data": data}


def _default(obj: Any) -> Any:
    if isinstance(obj, memoryview):
        return obj.tobytes()
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot encode {type(obj).__name__}")


def dumps(obj: Any, content_type: str) -> bytes:
    if content_type == MSGPACK:
        return msgpack.packb(obj, use_bin_type=True, default=_default)
    return json.dumps(obj, default=_default, separators=(",", ":")).encode()


def loads(body: bytes, content_type: str) -> Any:
    """Parse a body; any syntax error becomes a TensorError (a 400 on the server)."""
    try:
        if content_type == MSGPACK:
            return msgpack.unpackb(body, raw=False, strict_map_key=True)
        return json.loads(body)
    except (ValueError, msgpack.UnpackException, TypeError) as e:
        kind = "msgpack" if content_type == MSGPACK else "JSON"
        raise TensorError(f"body is not valid {kind}: {e}") from None


def content_type_of(header: str | None) -> str:
    """Normalise a Content-Type/Accept header to MSGPACK or JSON (JSON when unknown, as v2 expects)."""
    h = (header or "").lower()
    if "msgpack" in h:
        return MSGPACK
    return JSON


# --- v2 binary tensor data extension: JSON header + raw tensor bytes after it -------------------------------

BINARY_HEADER = "Inference-Header-Content-Length"


def pack_bytes(items: list[bytes]) -> bytes:
    """BYTES elements in the binary extension: each is a 4-byte little-endian length, then its bytes."""
    return b"".join(len(x).to_bytes(4, "little") + x for x in items)


def unpack_bytes(buf: bytes | memoryview, name: str) -> list[bytes]:
    out, pos, mv = [], 0, memoryview(buf)
    while pos < len(mv):
        if pos + 4 > len(mv):
            raise TensorError(f"tensor '{name}': truncated BYTES length prefix in binary data")
        n = int.from_bytes(mv[pos : pos + 4], "little")
        if pos + 4 + n > len(mv):
            raise TensorError(f"tensor '{name}': BYTES element of {n} bytes runs past its binary_data_size")
        out.append(bytes(mv[pos + 4 : pos + 4 + n]))
        pos += 4 + n
    return out


def raw_bytes(arr: np.ndarray) -> bytes | memoryview:
    """The bytes of a tensor as the binary extension (and msgpack) carry them."""
    if datatype_of(arr) == "BYTES":
        return pack_bytes([x if isinstance(x, bytes) else str(x).encode() for x in arr.reshape(-1)])
    flat = np.ascontiguousarray(arr.reshape(-1), dtype=arr.dtype.newbyteorder("<"))
    return memoryview(flat).cast("B")
