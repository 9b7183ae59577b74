"""Fuzz the decoder and request validation of a live daemon with hypothesis: thousands of malformed msgpack and
JSON bodies; never a 5xx, the daemon alive and its memory flat after."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import msgpack
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nosclient.codec import DATATYPES, content_type_of, loads

INFER = "/v2/models/nosd/identity/infer"
SETTINGS = settings(
    max_examples=2500, deadline=None, database=None, suppress_health_check=list(HealthCheck), derandomize=True
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=True),
    st.text(max_size=8),
    st.binary(max_size=64),
)
shapes = st.one_of(
    st.lists(st.integers(-3, 2**40), max_size=5), st.lists(st.integers(0, 6), min_size=1, max_size=3), scalars
)
tensors = st.fixed_dictionaries(
    {},
    optional={
        "name": st.one_of(st.just("x"), st.text(max_size=4), scalars),
        "datatype": st.one_of(st.sampled_from(list(DATATYPES)), scalars),
        "shape": shapes,
        "data": st.one_of(st.binary(max_size=256), st.lists(scalars, max_size=12), scalars),
        "parameters": st.one_of(
            st.fixed_dictionaries(
                {},
                optional={
                    "binary_data_size": st.integers(-5, 300),
                    "shared_memory_region": st.text(max_size=6),
                    "shared_memory_byte_size": st.integers(-5, 2**40),
                },
            ),
            scalars,
        ),
    },
)
documents = st.one_of(
    scalars,
    st.lists(scalars, max_size=3),
    st.fixed_dictionaries(
        {},
        optional={
            "id": scalars,
            "inputs": st.one_of(st.lists(tensors, max_size=3), scalars),
            "outputs": st.one_of(st.lists(st.dictionaries(st.text(max_size=5), scalars, max_size=3)), scalars),
            "parameters": st.one_of(
                st.fixed_dictionaries({}, optional={"timeout_ms": scalars, "binary_data_output": scalars}), scalars
            ),
        },
    ),
)


def _rss(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS"))) * 1024


def _pack(doc) -> bytes:
    return msgpack.packb(doc, use_bin_type=True)


def test_fuzz_never_breaks_the_daemon(daemon) -> None:
    counts = {"4xx": 0, "200": 0}
    http = httpx.Client(base_url=daemon.url, timeout=30)

    def post(body: bytes, ctype: str, extra: dict | None = None) -> None:
        r = http.post(INFER, content=body, headers={"Content-Type": ctype, **(extra or {})})
        assert r.status_code < 500, (r.status_code, r.text, body[:200])
        if r.status_code >= 400:
            assert loads(r.content, content_type_of(r.headers["content-type"]))["error"], "errors say what to fix"
            counts["4xx"] += 1
        else:
            counts["200"] += 1

    @SETTINGS
    @given(st.binary(max_size=512))
    def raw_bytes(body: bytes) -> None:
        post(body, "application/msgpack")

    @SETTINGS
    @given(documents)
    def msgpack_documents(doc) -> None:
        try:
            body = _pack(doc)
        except (OverflowError, ValueError):
            return
        post(body, "application/msgpack")

    @SETTINGS
    @given(documents, st.integers(-10, 600))
    def json_documents(doc, header_length: int) -> None:
        body = json.dumps(doc, default=lambda b: b.hex()).encode()
        post(body, "application/json")
        post(body + b"\x00" * 16, "application/octet-stream", {"Inference-Header-Content-Length": str(header_length)})

    warm = _pack({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": b"\0" * 8}]})
    for _ in range(300):  # warm the allocator and caches before the baseline
        post(warm, "application/msgpack")
        post(b"\xc1", "application/msgpack")
    before = _rss(daemon.proc.pid)
    raw_bytes()
    msgpack_documents()
    json_documents()
    after = _rss(daemon.proc.pid)
    total = counts["4xx"] + counts["200"]
    print(f"fuzz: {total} requests, {counts['4xx']} 4xx; daemon RSS {before / 1e6:.1f} -> {after / 1e6:.1f} MB")
    assert total > 10_000 and counts["4xx"] > 0.9 * total
    ok = http.post(INFER, content=warm, headers={"Content-Type": "application/msgpack"})
    assert (
        ok.status_code == 200 and np.frombuffer(msgpack.unpackb(ok.content)["outputs"][0]["data"], np.float32).size == 2
    )
    assert after < before * 1.05, f"daemon RSS grew {before / 1e6:.1f} -> {after / 1e6:.1f} MB"
    http.close()
