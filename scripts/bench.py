"""Serving overhead, measured against its own baseline in the same run.

  * in-process: nosd's own resnet18 code (same preprocessing) called directly, best images/s over a batch sweep;
  * served: the real daemon (embedded Ray), resnet18 at 1 and 32 concurrent clients, one 224x224 image a request,
    32 clients interleaved with in-process runs (median ratio of the pairs: the machine is noisy);
  * identity: p50 round trip of a tiny ``nosd/identity`` request.

Prints the ratios and writes bench.json and bench.png to --out. The load generator runs in this process
(aiohttp + nosd's codec), the daemon in another; both share the machine's cores, as any same-host client does.
Weights: random, written to a temporary TORCH_HOME when the real file is absent (the compute is the same).

    .venv/bin/python scripts/bench.py
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from tqdm import tqdm

import benchkit
from nosclient.codec import MSGPACK, dumps, encode_tensor, loads
from nosd.testing import start_daemon

HEADERS = {"Content-Type": MSGPACK, "Accept": MSGPACK}


def ensure_weights(home: Path) -> None:
    import torch
    import torchvision

    weights = torchvision.models.ResNet18_Weights.DEFAULT
    path = home / "hub" / "checkpoints" / os.path.basename(weights.url)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(torchvision.models.resnet18().state_dict(), path)


class InProcess:
    """nosd's own Classifier called directly: the same preprocessing and forward the worker runs."""

    def __init__(self, threads: int):
        import torch

        from nosd.hub.torchvision import Classifier

        torch.set_num_threads(threads)
        self.model = Classifier("cpu", "resnet18")

    def images_per_s(self, images: np.ndarray, batch_size: int, seconds: float) -> float:
        import torch

        batch = {"images": images[:batch_size]}
        with torch.inference_mode():
            self.model(batch)
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                self.model(batch)
                n += batch_size
        return n / (time.perf_counter() - t0)


async def load(url: str, images: np.ndarray, clients: int, seconds: float) -> dict[str, float]:
    bodies = [dumps({"inputs": [encode_tensor("images", img[None], True)]}, MSGPACK) for img in images]
    lat: list[float] = []
    sizes: list[int] = []
    stop = time.perf_counter() + seconds
    conn = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(url, connector=conn, headers=HEADERS) as s:

        async def client(i: int) -> None:
            while time.perf_counter() < stop:
                t = time.perf_counter()
                async with s.post("/v2/models/torchvision/resnet18/infer", data=bodies[i % len(bodies)]) as r:
                    body = loads(await r.read(), MSGPACK)
                    assert r.status == 200, body
                lat.append(time.perf_counter() - t)
                sizes.append(body["parameters"]["batch_size"])

        t0 = time.perf_counter()
        await asyncio.gather(*(client(i) for i in range(clients)))
        elapsed = time.perf_counter() - t0
    return {
        "clients": clients,
        "images_per_s": len(lat) / elapsed,
        "p50_ms": 1e3 * statistics.median(lat),
        "p99_ms": 1e3 * float(np.percentile(lat, 99)),
        "mean_batch": float(np.mean(sizes)),
    }


def identity_p50(url: str, n: int = 2000) -> dict[str, float]:
    """Sequential tiny requests on one keep-alive connection (http.client: the least client overhead)."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port))
    body = dumps({"inputs": [encode_tensor("x", np.zeros((1, 4), np.float32), True)]}, MSGPACK)
    lat = []
    for _ in tqdm(range(n), desc="identity round trips"):
        t = time.perf_counter()
        conn.request("POST", "/v2/models/nosd/identity/infer", body, HEADERS)
        r = conn.getresponse()
        r.read()
        lat.append(time.perf_counter() - t)
    conn.close()
    lat = lat[n // 10 :]
    return {"p50_ms": 1e3 * statistics.median(lat), "p99_ms": 1e3 * float(np.percentile(lat, 99))}


def plot(sweep: dict[int, float], served: list[dict[str, float]]) -> Any:
    fig, ax = benchkit.subplots(figsize=(7, 4))
    ax.plot(list(sweep), list(sweep.values()), "o-", label="in-process (batch size on x)")
    for s in served:
        ax.axhline(
            s["images_per_s"],
            linestyle="--",
            color="C1" if s["clients"] > 1 else "C2",
            label=f"served, {s['clients']} client(s)",
        )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel("images/s")
    ax.set_title("resnet18 on this CPU: nosd vs in-process")
    ax.legend()
    return fig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=8.0, help="duration of each measured phase")
    p.add_argument("--compiled-graph", action="store_true", help="run the daemon with --compiled-graph")
    p.add_argument("--rounds", type=int, default=5, help="interleaved in-process/served pairs")
    p.add_argument("--out", type=Path, default=Path("bench-out"))
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = p.parse_args()
    home = Path(os.environ.get("TORCH_HOME") or tempfile.mkdtemp(prefix="nosd-bench-"))
    ensure_weights(home)
    os.environ["TORCH_HOME"] = str(home)
    images = np.random.default_rng(0).integers(0, 256, (32, 224, 224, 3), dtype=np.uint8)

    local = InProcess(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        extra = ["--compiled-graph"] if args.compiled_graph else []
        d = start_daemon(Path(tmp), "--models", "nosd/identity,torchvision/resnet18", *extra)
        try:
            ident = identity_p50(d.url)
            sweep = {
                bs: local.images_per_s(images, bs, 3) for bs in tqdm([1, 2, 4, 8, 16, 32], desc="in-process sweep")
            }
            best_bs = max(sweep, key=lambda b: sweep[b])
            asyncio.run(load(d.url, images, 4, 3))  # warm-up
            single = asyncio.run(load(d.url, images, 1, args.seconds))
            # Interleaved pairs: the machine is noisy, so each served run is compared with the in-process run
            # right next to it, and the median ratio is reported.
            pairs = []
            for _ in tqdm(range(args.rounds), desc="interleaved rounds (in-process, served x32)"):
                best = local.images_per_s(images, best_bs, args.seconds)
                pairs.append((best, asyncio.run(load(d.url, images, 32, args.seconds))))
        finally:
            d.stop()
    ratios = [s["images_per_s"] / b for b, s in pairs]
    mid = sorted(range(len(pairs)), key=lambda i: ratios[i])[len(pairs) // 2]
    served = [single, pairs[mid][1]]
    sweep[best_bs] = pairs[mid][0]
    result = {
        "in_process_images_per_s": sweep,
        "in_process_best": sweep[best_bs],
        "best_batch": best_bs,
        "served": served,
        "identity": ident,
        "ratios_32": ratios,
    }
    benchkit.save(args.out, "bench", result, plot(sweep, served))

    print(f"\nin-process resnet18, best: {sweep[best_bs]:.1f} images/s at batch {best_bs} ({args.threads} threads)")
    for s in served:
        print(
            f"served, {s['clients']:>2} client(s): {s['images_per_s']:6.1f} images/s  "
            f"p50 {s['p50_ms']:7.1f} ms  p99 {s['p99_ms']:7.1f} ms  mean batch {s['mean_batch']:.1f}  "
            f"ratio to in-process best {s['images_per_s'] / sweep[best_bs]:.2f}"
        )
    print(
        f"32-client ratio over {len(ratios)} interleaved pairs: median {statistics.median(ratios):.2f} "
        f"(min {min(ratios):.2f}, max {max(ratios):.2f})"
    )
    print(f"identity round trip: p50 {ident['p50_ms']:.2f} ms  p99 {ident['p99_ms']:.2f} ms")


if __name__ == "__main__":
    main()
