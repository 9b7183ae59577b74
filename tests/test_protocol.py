"""The KServe v2 REST surface of a real daemon: paths, encodings, and a 4xx for every bad input."""

from __future__ import annotations

import json

import httpx
import msgpack
import numpy as np
import pytest

from nosclient import Client, NosdError
from nosclient.codec import DATATYPES

MP = {"Content-Type": "application/msgpack", "Accept": "application/msgpack"}


def test_health_and_server_metadata(daemon) -> None:
    assert httpx.get(daemon.url + "/v2/health/live").status_code == 200
    assert httpx.get(daemon.url + "/v2/health/ready").json() == {"ready": True}
    meta = httpx.get(daemon.url + "/v2").json()
    assert meta["name"] == "nosd" and "model_repository" in meta["extensions"]


def test_models_lists_the_hub_with_task_and_state(daemon) -> None:
    models = {m["name"]: m for m in httpx.get(daemon.url + "/v2/models").json()["models"]}
    for name in (
        "nosd/identity",
        "torchvision/resnet18",
        "torchvision/resnet50",
        "torchvision/mobilenet_v3_large",
        "torchvision/efficientnet_b0",
        "torchvision/fasterrcnn_mobilenet_v3_large_320_fpn",
    ):
        assert name in models
    assert models["nosd/identity"]["state"] == "ready"
    assert models["torchvision/resnet18"]["task"] == "image-classification"


def test_model_metadata_with_a_slash_in_the_name(daemon) -> None:
    meta = httpx.get(daemon.url + "/v2/models/torchvision/resnet18").json()
    assert meta["name"] == "torchvision/resnet18" and meta["platform"] == "pytorch"
    assert meta["inputs"][0] == {
        "name": "images",
        "datatype": "UINT8",
        "shape": [-1, -1, -1, 3],
        "datatypes": ["UINT8", "BYTES"],
    }
    assert {o["name"] for o in meta["outputs"]} == {"logits", "label"}
    assert meta["max_batch_size"] >= 1
    assert httpx.get(daemon.url + "/v2/models/nosd/identity/ready").status_code == 200


@pytest.mark.parametrize("datatype", [d for d in DATATYPES if d != "BYTES"])
def test_identity_returns_every_numeric_datatype_unchanged(daemon, datatype: str) -> None:
    arr = (np.arange(24) % 2 == 1) if datatype == "BOOL" else np.arange(24).astype(DATATYPES[datatype])
    arr = arr.reshape(2, 3, 4)
    with Client(daemon.url) as c:
        out = c.infer("nosd/identity", {"x": arr})["y"]
    assert out.dtype == arr.dtype and out.shape == arr.shape
    np.testing.assert_array_equal(out, arr)


def test_plain_json_v2_request_gets_a_json_response(daemon) -> None:
    body = {"id": "r1", "inputs": [{"name": "x", "datatype": "INT32", "shape": [2, 2], "data": [1, 2, 3, 4]}]}
    r = httpx.post(daemon.url + "/v2/models/nosd/identity/infer", json=body)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    resp = r.json()
    assert resp["model_name"] == "nosd/identity" and resp["id"] == "r1"
    assert resp["outputs"] == [{"name": "y", "datatype": "INT32", "shape": [2, 2], "data": [1, 2, 3, 4]}]
    assert {"batch_size", "queue_ms", "compute_ms"} <= set(resp["parameters"])


def test_accept_header_picks_the_response_encoding(daemon) -> None:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1.5, 2.5]}]}
    r = httpx.post(daemon.url + "/v2/models/nosd/identity/infer", json=body, headers={"Accept": "application/msgpack"})
    assert r.headers["content-type"].startswith("application/msgpack")
    out = msgpack.unpackb(r.content)["outputs"][0]
    assert np.frombuffer(out["data"], "<f4").tolist() == [1.5, 2.5]


def _post(daemon, body: bytes, headers: dict[str, str] | None = None, model: str = "nosd/identity"):
    return httpx.post(f"{daemon.url}/v2/models/{model}/infer", content=body, headers=headers or MP)


def _mp(*inputs: dict) -> bytes:
    return msgpack.packb({"inputs": list(inputs)})


X = {"name": "x", "datatype": "FP32", "shape": [1, 2], "data": np.zeros(2, "<f4").tobytes()}
BAD = [
    ("malformed msgpack", b"\xc1\xc1\xc1", MP, 400, "not valid msgpack"),
    ("malformed json", b"{oops", {"Content-Type": "application/json"}, 400, "not valid JSON"),
    ("no inputs", msgpack.packb({"inputs": []}), MP, 400, "non-empty list"),
    ("unknown input", _mp({**X, "name": "z"}), MP, 400, "has no input 'z'"),
    ("bytes too short", _mp({**X, "data": b"\0" * 7}), MP, 400, "needs 8 bytes"),
    ("shape vs data", _mp({**X, "shape": [3, 2]}), MP, 400, "needs 24 bytes"),
    ("no batch dim", _mp({**X, "shape": [], "data": b"\0" * 4}), MP, 400, "batch dimension"),
    ("bad datatype", _mp({**X, "datatype": "COMPLEX"}), MP, 400, "unknown datatype"),
    ("unknown output", msgpack.packb({"inputs": [X], "outputs": [{"name": "nope"}]}), MP, 400, "no output"),
]


@pytest.mark.parametrize("case, body, headers, status, message", BAD, ids=[b[0] for b in BAD])
def test_bad_requests_get_a_4xx_that_says_what_to_fix_and_the_daemon_keeps_serving(
    daemon, case, body, headers, status, message
) -> None:
    r = _post(daemon, body, headers)
    assert r.status_code == status, r.content
    err = msgpack.unpackb(r.content) if "msgpack" in r.headers["content-type"] else r.json()
    assert message in err["error"]
    ok = _post(daemon, _mp(X))
    assert ok.status_code == 200


def test_wrong_datatype_and_shape_for_an_image_model(daemon) -> None:
    with Client(daemon.url) as c:
        with pytest.raises(NosdError, match="takes datatype UINT8 or BYTES") as e:
            c.infer("torchvision/resnet18", {"images": np.zeros((1, 8, 8, 3), np.float32)})
        assert e.value.status == 400
        with pytest.raises(NosdError, match=r"does not match \[-1, -1, -1, 3\]"):
            c.infer("torchvision/resnet18", {"images": np.zeros((1, 8, 8, 4), np.uint8)})


def test_unknown_model_is_404_on_every_route(daemon) -> None:
    assert _post(daemon, _mp(X), model="no/such").status_code == 404
    assert httpx.get(daemon.url + "/v2/models/no/such").status_code == 404
    assert httpx.get(daemon.url + "/v2/models/no/such/ready").status_code == 404
    r = httpx.post(daemon.url + "/v2/repository/models/no/such/load")
    assert r.status_code == 404 and "GET /v2/models" in r.json()["error"]


def test_body_over_the_limit_is_413(daemon) -> None:
    big = np.zeros((1, 9 * 2**20), np.uint8)  # the shared daemon runs with --max-body-mb 8
    body = msgpack.packb(
        {"inputs": [{"name": "x", "datatype": "UINT8", "shape": list(big.shape), "data": big.tobytes()}]}
    )
    r = _post(daemon, body)
    assert r.status_code == 413 and "--max-body-mb" in msgpack.unpackb(r.content)["error"]
    assert _post(daemon, _mp(X)).status_code == 200


def test_json_error_body_is_v2_shaped(daemon) -> None:
    r = httpx.post(
        daemon.url + "/v2/models/nosd/identity/infer", content=b"[1]", headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 400 and set(json.loads(r.content)) == {"error"}
