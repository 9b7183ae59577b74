"""The one tensor codec: every datatype round-trips in msgpack and JSON; lies about shape are caught."""

from __future__ import annotations

import numpy as np
import pytest

from nosclient.codec import DATATYPES, JSON, MSGPACK, TensorError, decode_tensor, dumps, encode_tensor, loads

NUMERIC = [d for d in DATATYPES if d != "BYTES"]


def _sample(datatype: str, shape: tuple[int, ...]) -> np.ndarray:
    rng = np.random.default_rng(0)
    dtype = DATATYPES[datatype]
    if datatype == "BOOL":
        return rng.integers(0, 2, shape).astype(bool)
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)


@pytest.mark.parametrize("datatype", NUMERIC)
@pytest.mark.parametrize("ctype", [MSGPACK, JSON])
def test_numeric_round_trip(datatype: str, ctype: str) -> None:
    arr = _sample(datatype, (2, 3, 5))
    wire = loads(dumps(encode_tensor("t", arr, binary=ctype == MSGPACK), ctype), ctype)
    name, back = decode_tensor(wire)
    assert name == "t" and back.dtype == arr.dtype and back.shape == arr.shape
    np.testing.assert_array_equal(back, arr)


def test_msgpack_numeric_data_is_one_bin_of_little_endian_bytes() -> None:
    arr = np.arange(6, dtype=">i4").reshape(2, 3)  # big-endian in memory on purpose
    t = encode_tensor("t", arr, binary=True)
    assert bytes(t["data"]) == np.arange(6, dtype="<i4").tobytes()
    assert t["datatype"] == "INT32" and t["shape"] == [2, 3]


def test_non_contiguous_arrays_encode_in_row_major_order() -> None:
    arr = np.arange(12, dtype=np.float32).reshape(3, 4).T
    _, back = decode_tensor(loads(dumps(encode_tensor("t", arr, True), MSGPACK), MSGPACK))
    np.testing.assert_array_equal(back, arr)


@pytest.mark.parametrize("ctype", [MSGPACK, JSON])
def test_bytes_round_trip(ctype: str) -> None:
    arr = np.array([b"abc", b"", "h\u00e9".encode()], dtype=object)
    _, back = decode_tensor(loads(dumps(encode_tensor("s", arr, ctype == MSGPACK), ctype), ctype))
    assert list(back) == list(arr)


@pytest.mark.parametrize(
    "tensor, message",
    [
        ({"name": "x", "datatype": "FP32", "shape": [2], "data": b"\0" * 4}, "needs 8 bytes"),
        ({"name": "x", "datatype": "FP32", "shape": [3], "data": [1.0, 2.0]}, "needs 3 elements"),
        ({"name": "x", "datatype": "FP8", "shape": [1], "data": [1]}, "unknown datatype"),
        ({"name": "x", "datatype": "INT8", "shape": [-1], "data": [1]}, "non-negative"),
        ({"name": "x", "datatype": "INT8", "shape": [1]}, "no 'data'"),
        ({"datatype": "INT8", "shape": [1], "data": [1]}, "missing its 'name'"),
        ({"name": "x", "datatype": "BYTES", "shape": [2], "data": [b"a"]}, "needs 2 elements"),
        ({"name": "x", "datatype": "INT32", "shape": [1], "data": ["nope"]}, "flat list of INT32"),
        ({"name": "x", "datatype": "INT32", "shape": [1], "data": 5}, "must be bin"),
        ("not a map", "must be a map"),
    ],
)
def test_bad_tensors_raise_a_message_that_names_the_problem(tensor: object, message: str) -> None:
    with pytest.raises(TensorError, match=message):
        decode_tensor(tensor)


@pytest.mark.parametrize("ctype", [MSGPACK, JSON])
def test_garbage_bodies_raise_tensor_error(ctype: str) -> None:
    with pytest.raises(TensorError, match="not valid"):
        loads(b"\xc1\xff{not", ctype)
