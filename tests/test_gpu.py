"""On a real GPU: two models measured by torch.cuda, their sum checked against a budget that fits one.

Skipped without CUDA (CI has none). Run on a GPU machine: ``.venv/bin/python -m pytest -q -m gpu -s``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import start_daemon
from nosclient import Client

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
X = {"x": np.ones((1, 4), np.float32)}


def test_two_models_measured_on_the_gpu_share_it_and_a_small_budget_evicts(tmp_path, torch_home) -> None:
    d = start_daemon(tmp_path, "--runtime", "gpu", env={"TORCH_HOME": str(torch_home)})
    try:
        with Client(d.url) as c:
            images = np.zeros((2, 224, 224, 3), np.uint8)
            c.infer("torchvision/resnet18", {"images": images})
            c.infer("torchvision/fasterrcnn_mobilenet_v3_large_320_fpn", {"images": images})
            r18 = c.metadata("torchvision/resnet18")
            det = c.metadata("torchvision/fasterrcnn_mobilenet_v3_large_320_fpn")
            mem = c._http.get("/nosd/memory", headers={"Accept": "application/json"}).json()
        for meta in (r18, det):
            p = meta["profile"]
            print(
                f"{meta['name']}: {p['device']} memory {p['memory_bytes'] / 1e6:.0f} MB, "
                f"params {p['param_bytes'] / 1e6:.0f} MB, best batch {p['best_batch_size']}"
            )
            assert p["memory_bytes"] >= p["param_bytes"] > 0  # peak allocation covers at least the weights
            assert meta["state"]["loaded"]
        print(
            f"GPU total {mem['total_bytes'] / 1e9:.1f} GB, budget {mem['budget_bytes'] / 1e9:.1f} GB, "
            f"models {mem['models_bytes'] / 1e6:.0f} MB, device used {mem['device_used_bytes'] / 1e6:.0f} MB"
        )
        assert mem["models_bytes"] == r18["state"]["memory_bytes"] + det["state"]["memory_bytes"]
        assert mem["device_used_bytes"] >= mem["models_bytes"]
        budget = int(max(r18["profile"]["memory_bytes"], det["profile"]["memory_bytes"]) * 1.5)
    finally:
        assert d.stop() == 0
    d = start_daemon(tmp_path, "--runtime", "gpu", "--memory-budget", str(budget), env={"TORCH_HOME": str(torch_home)})
    try:  # the catalog has both sizes now: loading the second must evict the first, before it starts
        with Client(d.url) as c:
            c.infer("torchvision/resnet18", {"images": images})
            c.infer("torchvision/fasterrcnn_mobilenet_v3_large_320_fpn", {"images": images})
            states = {m["name"]: m["state"] for m in c.models()}
        assert states["torchvision/resnet18"] == "unloaded"
        assert states["torchvision/fasterrcnn_mobilenet_v3_large_320_fpn"] == "ready"
    finally:
        assert d.stop() == 0
