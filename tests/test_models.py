"""Real models through the real daemon: answers equal in-process torchvision, batched and not."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import torchvision

from conftest import encode, start_daemon
from nosclient import AsyncClient, Client, NosdError

RESNET = "torchvision/resnet18"


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, (4, 240, 320, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def reference(torch_home, images) -> np.ndarray:
    """In-process resnet18 with the very weights file the daemon loads, and weights.transforms()."""
    weights = torchvision.models.ResNet18_Weights.DEFAULT
    model = torchvision.models.resnet18()
    model.load_state_dict(torch.load(torch_home / "hub/checkpoints" / os.path.basename(weights.url)))
    model.eval()
    with torch.inference_mode():
        x = weights.transforms()(torch.from_numpy(images).permute(0, 3, 1, 2))
        return model(x).numpy()


def test_resnet18_over_msgpack_equals_in_process_torchvision(daemon, images, reference) -> None:
    with Client(daemon.url) as c:
        out = c.infer(RESNET, {"images": images})
    assert out["logits"].shape == (4, 1000) and out["logits"].dtype == np.float32
    np.testing.assert_allclose(out["logits"], reference, rtol=1e-4, atol=1e-4)
    categories = torchvision.models.ResNet18_Weights.DEFAULT.meta["categories"]
    assert out["label"].tolist() == [categories[i].encode() for i in reference.argmax(1)]


def test_resnet18_over_plain_json_equals_in_process(daemon, images, reference) -> None:
    body = {
        "inputs": [
            {"name": "images", "datatype": "UINT8", "shape": [1, 240, 320, 3], "data": images[:1].reshape(-1).tolist()}
        ],
        "outputs": [{"name": "logits"}],
    }
    r = httpx.post(daemon.url + "/v2/models/" + RESNET + "/infer", json=body, timeout=120)
    assert r.status_code == 200, r.text
    (logits,) = r.json()["outputs"]
    assert logits["name"] == "logits" and logits["shape"] == [1, 1000]
    np.testing.assert_allclose(np.array(logits["data"]).reshape(1, 1000), reference[:1], rtol=1e-4, atol=1e-4)


def test_encoded_png_and_jpeg_decode_in_the_worker(daemon, images, reference) -> None:
    png, jpeg = encode(images[0], ".png"), encode(images[0], ".jpg")
    with Client(daemon.url) as c:
        out = c.infer(RESNET, {"images": [png, jpeg]})["logits"]
    np.testing.assert_allclose(out[0], reference[0], rtol=1e-4, atol=1e-4)  # PNG is lossless
    assert np.corrcoef(out[1], reference[0])[0, 1] > 0.95  # JPEG is close, not equal


async def test_32_concurrent_clients_are_batched_and_get_their_own_answers(daemon, images) -> None:
    rng = np.random.default_rng(2)
    batch = rng.integers(0, 256, (32, 1, 64, 64, 3), dtype=np.uint8)
    with Client(daemon.url) as c:
        c.load(RESNET, max_batch_size=8)  # whatever the profile picked, let this test's batches form
        alone = [c.infer(RESNET, {"images": b})["logits"] for b in batch]
    async with AsyncClient(daemon.url) as ac:
        results = await asyncio.gather(*(ac.infer_result(RESNET, {"images": b}) for b in batch))
    sizes = [r.parameters["batch_size"] for r in results]
    assert max(sizes) > 1, f"no batching happened: {sizes}"
    for r, ref in zip(results, alone, strict=True):
        np.testing.assert_allclose(r.outputs["logits"], ref, rtol=1e-3, atol=1e-3)


def test_detector_returns_padded_boxes_with_counts(daemon, images) -> None:
    with Client(daemon.url) as c:
        out = c.infer("torchvision/fasterrcnn_mobilenet_v3_large_320_fpn", {"images": images[:2]})
    n = out["num_detections"]
    assert n.shape == (2,) and n.dtype == np.int32
    k = out["boxes"].shape[1]
    assert out["boxes"].shape == (2, k, 4) and out["scores"].shape == (2, k) and out["labels"].shape == (2, k)
    assert k == n.max()
    for i in range(2):
        boxes = out["boxes"][i, : n[i]]
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 320).all() and (boxes[:, 3] <= 240).all()
        assert (out["boxes"][i, n[i] :] == 0).all()


def test_custom_model_from_a_module_path(daemon) -> None:
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    with Client(daemon.url) as c:
        out = c.infer("custom/scaler", {"x": x})
        assert c.metadata("custom/scaler")["task"] == "custom"
    np.testing.assert_array_equal(out["y"], x * 3)


def test_a_failing_model_is_500_with_its_message_and_others_keep_serving(daemon) -> None:
    with Client(daemon.url) as c:
        with pytest.raises(NosdError, match="always fails") as e:
            c.infer("custom/broken", {"x": np.zeros(2, np.float32)})
        assert e.value.status == 500
        assert c.infer("nosd/identity", {"x": np.ones(1, np.int8)})["y"].tolist() == [1]


def test_missing_weights_name_the_path_and_how_to_get_them(daemon, torch_home) -> None:
    with Client(daemon.url) as c:
        with pytest.raises(NosdError) as e:
            c.infer("torchvision/resnet50", {"images": np.zeros((1, 32, 32, 3), np.uint8)})
        assert e.value.status == 500
        assert str(torch_home / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth") in e.value.message
        assert "download https://download.pytorch.org/models/resnet50-11ad3fa6.pth" in e.value.message
        assert c.metadata("torchvision/resnet50")["state"]["state"] == "failed"


@pytest.fixture(scope="module")
def compiled_daemon(tmp_path_factory):
    """A second daemon whose replicas are called through Ray Compiled Graphs (--compiled-graph)."""
    started = time.time()
    d = start_daemon(tmp_path_factory.mktemp("compiled"), "--compiled-graph", "--models", "nosd/identity")
    yield d
    assert d.stop() == 0, d.log.read_text()[-3000:]
    # Ray 2.60's compiled-graph channels leave named semaphores (sem.hdr<pid>-*, sem.obj<pid>-*) in /dev/shm
    # after teardown. Remove those made since this daemon started by processes that are gone now.
    for leftover in Path("/dev/shm").glob("sem.*"):
        pid = int(leftover.name[7:].split("-")[0]) if leftover.name[7:].split("-")[0].isdigit() else 0
        if pid and leftover.stat().st_mtime >= started and not Path(f"/proc/{pid}").exists():
            leftover.unlink(missing_ok=True)


def test_compiled_graph_calls_return_the_same_answers(compiled_daemon) -> None:
    x = np.random.default_rng(3).standard_normal((3, 5)).astype(np.float32)
    with Client(compiled_daemon.url) as c:
        for _ in range(5):
            np.testing.assert_array_equal(c.infer("nosd/identity", {"x": x})["y"], x)
        with pytest.raises(NosdError, match="always fails"):  # an application error keeps the graph usable
            c.infer("custom/broken", {"x": x[0]})
        np.testing.assert_array_equal(c.infer("nosd/identity", {"x": x})["y"], x)


@pytest.mark.parametrize("which", ["daemon", "compiled_daemon"])
def test_a_killed_worker_fails_in_flight_requests_with_503_then_comes_back(request, which: str) -> None:
    daemon = request.getfixturevalue(which)
    with Client(daemon.url) as c:
        pid = int(c.infer("custom/sleeper", {"seconds": np.zeros(1, np.float32)})["pid"][0])

        async def kill_soon() -> None:
            await asyncio.sleep(1.0)
            os.kill(pid, signal.SIGKILL)

        async def in_flight() -> NosdError | None:
            async with AsyncClient(daemon.url) as ac:
                try:
                    await ac.infer("custom/sleeper", {"seconds": np.full(1, 5, np.float32)})
                except NosdError as e:
                    return e
            return None

        async def both():
            return (await asyncio.gather(in_flight(), kill_soon()))[0]

        err = asyncio.run(both())
        assert err is not None and err.status == 503 and "retry" in err.message
        deadline = time.monotonic() + 60
        while True:
            try:
                new_pid = int(c.infer("custom/sleeper", {"seconds": np.zeros(1, np.float32)})["pid"][0])
                break
            except NosdError as e:
                assert e.status == 503 and time.monotonic() < deadline
                time.sleep(0.5)
        assert new_pid != pid


def test_embeddings_are_unit_length_pooled_resnet18_features(daemon, images, torch_home) -> None:
    with Client(daemon.url) as c:
        emb = c.infer("torchvision/resnet18-embedding", {"images": images[:2]})["embedding"]
    assert emb.shape == (2, 512)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    weights = torchvision.models.ResNet18_Weights.DEFAULT
    model = torchvision.models.resnet18()
    model.load_state_dict(torch.load(torch_home / "hub/checkpoints" / os.path.basename(weights.url)))
    model.fc = torch.nn.Identity()
    with torch.inference_mode():
        ref = model.eval()(weights.transforms()(torch.from_numpy(images[:2]).permute(0, 3, 1, 2)))
    np.testing.assert_allclose(emb, torch.nn.functional.normalize(ref, dim=1).numpy(), rtol=1e-4, atol=1e-5)


def test_segmentation_masks_have_the_input_size_and_voc_classes(daemon) -> None:
    rng = np.random.default_rng(4)
    small = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    large = rng.integers(0, 256, (80, 40, 3), dtype=np.uint8)
    png = [encode(a) for a in (small, large)]
    with Client(daemon.url) as c:
        one = c.infer("torchvision/lraspp_mobilenet_v3_large", {"images": small[None]})["mask"]
        two = c.infer("torchvision/lraspp_mobilenet_v3_large", {"images": png})["mask"]
    assert one.shape == (1, 48, 64) and one.dtype == np.uint8 and one.max() < 21
    assert two.shape == (2, 80, 64)  # images of different sizes: padded to the largest on every axis
    np.testing.assert_array_equal(two[0, :48, :64], one[0])
