"""Same-host fast path with stock tritonclient (a client no one here wrote): binary data and system shm."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as th
import tritonclient.utils.shared_memory as tshm
from tritonclient.utils import InferenceServerException

from nosd.shm import ShmRef
from nosd.worker import Work, Worker

DTYPES = {"UINT8": np.uint8, "FP16": np.float16, "FP32": np.float32}
SHAPES = [(1, 7), (3, 32, 32, 3), (2, 1000)]


@pytest.fixture
def triton(daemon):
    c = th.InferenceServerClient(daemon.url.removeprefix("http://"))
    yield c
    c.unregister_system_shared_memory()
    c.close()


@pytest.fixture
def regions():
    made = []

    def make(name: str, size: int):
        h = tshm.create_shared_memory_region(name, "/nosdtest_" + name, size)
        made.append(h)
        return h

    yield make
    for h in made:
        tshm.destroy_shared_memory_region(h)


def _sample(datatype: str, shape) -> np.ndarray:
    return (np.random.default_rng(0).random(shape) * 200).astype(DTYPES[datatype])


def test_server_advertises_the_extensions(triton) -> None:
    ext = triton.get_server_metadata()["extensions"]
    assert "system_shared_memory" in ext and "binary_tensor_data" in ext


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("datatype", list(DTYPES))
def test_tritonclient_http_round_trip(triton, datatype: str, binary: bool) -> None:
    for shape in SHAPES:
        x = _sample(datatype, shape)
        inp = th.InferInput("x", list(x.shape), datatype)
        inp.set_data_from_numpy(x, binary_data=binary)
        res = triton.infer("nosd/identity", [inp], outputs=[th.InferRequestedOutput("y", binary_data=binary)])
        y = res.as_numpy("y")
        assert y.dtype == x.dtype and y.shape == x.shape
        np.testing.assert_array_equal(y, x)


@pytest.mark.parametrize("datatype", list(DTYPES))
def test_tritonclient_system_shm_round_trip_equals_http(triton, regions, datatype: str) -> None:
    for i, shape in enumerate(SHAPES):
        x = _sample(datatype, shape)
        hin, hout = regions(f"in{datatype}{i}", x.nbytes), regions(f"out{datatype}{i}", x.nbytes)
        tshm.set_shared_memory_region(hin, [x])
        triton.register_system_shared_memory(f"in{datatype}{i}", f"/nosdtest_in{datatype}{i}", x.nbytes)
        triton.register_system_shared_memory(f"out{datatype}{i}", f"/nosdtest_out{datatype}{i}", x.nbytes)
        inp = th.InferInput("x", list(x.shape), datatype)
        inp.set_shared_memory(f"in{datatype}{i}", x.nbytes)
        out = th.InferRequestedOutput("y", binary_data=True)
        out.set_shared_memory(f"out{datatype}{i}", x.nbytes)
        res = triton.infer("nosd/identity", [inp], outputs=[out])
        meta = res.get_output("y")
        assert meta["shape"] == list(shape) and "data" not in meta
        y = tshm.get_contents_as_numpy(hout, DTYPES[datatype], shape)
        np.testing.assert_array_equal(y, x)
    names = {r["name"] for r in triton.get_system_shared_memory_status()}
    assert f"in{datatype}0" in names


def test_resnet18_over_shm_equals_http(triton, regions) -> None:
    images = np.random.default_rng(5).integers(0, 256, (2, 64, 80, 3), dtype=np.uint8)
    plain = th.InferInput("images", list(images.shape), "UINT8")
    plain.set_data_from_numpy(images)
    expected = triton.infer("torchvision/resnet18", [plain], outputs=[th.InferRequestedOutput("logits")])
    hin, hout = regions("rn_in", images.nbytes), regions("rn_out", 2 * 1000 * 4)
    tshm.set_shared_memory_region(hin, [images])
    triton.register_system_shared_memory("rn_in", "/nosdtest_rn_in", images.nbytes)
    triton.register_system_shared_memory("rn_out", "/nosdtest_rn_out", 8000)
    inp = th.InferInput("images", list(images.shape), "UINT8")
    inp.set_shared_memory("rn_in", images.nbytes)
    out = th.InferRequestedOutput("logits")
    out.set_shared_memory("rn_out", 8000)
    triton.infer("torchvision/resnet18", [inp], outputs=[out])
    got = tshm.get_contents_as_numpy(hout, np.float32, (2, 1000))
    np.testing.assert_allclose(got, expected.as_numpy("logits"), rtol=1e-5, atol=1e-5)


def test_bad_regions_are_400_and_the_daemon_keeps_serving(triton, regions) -> None:
    regions("small", 64)
    cases = [
        (lambda: triton.register_system_shared_memory("r1", "/nosdtest_absent", 64), "no shared-memory segment"),
        (lambda: triton.register_system_shared_memory("r2", "/nosdtest_small", 128), "past the end of segment"),
        (lambda: triton.register_system_shared_memory("r3", "/nosdtest_small", 16, offset=60), "past the end"),
        (lambda: triton.register_system_shared_memory("r4", "/../etc/passwd", 16), "not a POSIX name"),
        (lambda: triton.register_system_shared_memory("r5", "/a/b", 16), "not a POSIX name"),
    ]
    for call, message in cases:
        with pytest.raises(InferenceServerException, match=message):
            call()
    triton.register_system_shared_memory("ok", "/nosdtest_small", 64)
    x = np.ones((1, 16), np.float32)  # 64 bytes

    def infer_with(region: str, size: int, offset: int = 0, out: bool = False):
        inp = th.InferInput("x", [1, 16], "FP32")
        if out:
            inp.set_data_from_numpy(x)
            o = th.InferRequestedOutput("y")
            o.set_shared_memory(region, size, offset)
            return triton.infer("nosd/identity", [inp], outputs=[o])
        inp.set_shared_memory(region, size, offset)
        return triton.infer("nosd/identity", [inp])

    for args, message in [
        (("nope", 64), "not registered"),
        (("ok", 32), "is 64 bytes but shared_memory_byte_size is 32"),
        (("ok", 64, 8), "past the end of region"),
        (("ok", 32, 0, True), "gives shared_memory_byte_size 32"),
    ]:
        with pytest.raises(InferenceServerException, match=message) as e:
            infer_with(*args)
        assert e.value.status() == "400"
    inp = th.InferInput("x", [1, 16], "FP32")
    inp.set_data_from_numpy(x)
    np.testing.assert_array_equal(triton.infer("nosd/identity", [inp]).as_numpy("y"), x)


def test_overlapping_input_and_output_ranges_are_refused(triton, regions) -> None:
    regions("both", 128)
    triton.register_system_shared_memory("both", "/nosdtest_both", 128)
    inp = th.InferInput("x", [1, 16], "FP32")
    inp.set_shared_memory("both", 64, 0)
    out = th.InferRequestedOutput("y")
    out.set_shared_memory("both", 64, 32)
    with pytest.raises(InferenceServerException, match="overlap"):
        triton.infer("nosd/identity", [inp], outputs=[out])


def test_shm_and_http_requests_share_one_model_call(regions) -> None:
    """The worker builds one batch from a region and a body tensor (the real Worker class, in-process)."""
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    h = regions("mix", x.nbytes)
    tshm.set_shared_memory_region(h, [x])
    from nosd import hub

    worker = Worker(hub.get("nosd/identity"), "cpu", 1)
    calls = []
    model = worker.model
    worker.model = lambda batch: (calls.append(batch["x"].shape), model(batch))[1]
    ref = ShmRef("mix", "/nosdtest_mix", 0, x.nbytes, "FP32", (2, 4))
    results, _ = worker.infer([Work({"x": ref}), Work({"x": x + 100})])
    assert calls == [(4, 4)]
    np.testing.assert_array_equal(results[0]["y"], x)
    np.testing.assert_array_equal(results[1]["y"], x + 100)
    worker.shm.forget("/nosdtest_mix")


def test_worker_maps_a_region_once_and_unmaps_it_on_unregister(triton, regions) -> None:
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    h = regions("mapped", x.nbytes)
    tshm.set_shared_memory_region(h, [x])
    triton.register_system_shared_memory("mapped", "/nosdtest_mapped", x.nbytes)
    inp = th.InferInput("x", [2, 4], "FP32")
    inp.set_shared_memory("mapped", x.nbytes)
    res = triton.infer("custom/scaler", [inp])
    np.testing.assert_array_equal(res.as_numpy("y"), x * 3)
    maps = Path(f"/proc/{int(res.as_numpy('pid')[0])}/maps")
    assert "/dev/shm/nosdtest_mapped" in maps.read_text()
    triton.unregister_system_shared_memory("mapped")
    assert "/dev/shm/nosdtest_mapped" not in maps.read_text()


def test_a_segment_that_shrank_after_registration_is_a_400_not_a_crash(triton, regions) -> None:
    import os

    import posix_ipc

    x = np.ones((1, 1024), np.float32)
    regions("shrinks", x.nbytes)
    triton.register_system_shared_memory("shrinks", "/nosdtest_shrinks", x.nbytes)
    inp = th.InferInput("x", [1, 1024], "FP32")
    inp.set_shared_memory("shrinks", x.nbytes)
    triton.infer("nosd/identity", [inp])  # the worker maps it
    seg = posix_ipc.SharedMemory("/nosdtest_shrinks")
    os.ftruncate(seg.fd, 16)
    seg.close_fd()
    with pytest.raises(InferenceServerException, match="shrank") as e:
        triton.infer("nosd/identity", [inp])
    assert e.value.status() == "400"
    plain = th.InferInput("x", [1, 2], "FP32")
    plain.set_data_from_numpy(np.ones((1, 2), np.float32))
    assert triton.infer("nosd/identity", [plain]).as_numpy("y").tolist() == [[1.0, 1.0]]
