"""Big tensors through ``nosd/identity``: msgpack HTTP vs binary HTTP vs shared memory vs a plain memcpy.

For 1, 8 and 48 MB FP32 tensors, the median round trip of:
  * msgpack: nosclient over HTTP (tensor bytes in the msgpack body, both ways);
  * binary:  stock tritonclient with the v2 binary tensor data extension (raw bytes after a JSON header);
  * shm:     nosclient with transport="shm" (tensor in a pooled region; the worker reads it in place and writes
             the output into the output region; copies: caller -> region, region -> region, region -> caller);
  * shm view: the same with zero_copy=True: the output is a read-only view of its region (no third copy);
  * floor:   two memcpys of the same bytes in this process (np.copyto twice).
Prints each path's time and its ratio to the floor and to msgpack; writes bench_shm.json and bench_shm.png.

    .venv/bin/python scripts/bench_shm.py
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.http as th
from tqdm import tqdm

import benchkit
from nosclient import Client
from nosd.testing import start_daemon

SIZES_MB = [1, 8, 48]


def median_ms(fn, repeat: int) -> float:
    fn()  # warm-up: allocations, region registration
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=15)
    p.add_argument("--out", type=Path, default=Path("bench-out"))
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        d = start_daemon(Path(tmp), "--models", "nosd/identity", "--max-body-mb", "512")
        try:
            http, shm = Client(d.url), Client(d.url, transport="shm")
            triton = th.InferenceServerClient(d.url.removeprefix("http://"), network_timeout=120)
            for mb in tqdm(SIZES_MB, desc="tensor sizes"):
                x = np.random.default_rng(0).standard_normal((1, mb * 2**18)).astype(np.float32)  # mb MiB
                a, b = np.empty_like(x), np.empty_like(x)

                def floor(x=x, a=a, b=b) -> None:
                    np.copyto(a, x)
                    np.copyto(b, a)

                def binary(x=x) -> None:
                    inp = th.InferInput("x", list(x.shape), "FP32")
                    inp.set_data_from_numpy(x, binary_data=True)
                    out = triton.infer("nosd/identity", [inp], outputs=[th.InferRequestedOutput("y")])
                    assert out.as_numpy("y").shape == x.shape

                assert np.array_equal(shm.infer("nosd/identity", {"x": x})["y"], x)
                assert np.array_equal(http.infer("nosd/identity", {"x": x})["y"], x)
                rows.append(
                    {
                        "mb": mb,
                        "floor_ms": median_ms(floor, args.repeat),
                        "msgpack_ms": median_ms(lambda x=x: http.infer("nosd/identity", {"x": x}), args.repeat),
                        "binary_ms": median_ms(binary, args.repeat),
                        "shm_ms": median_ms(lambda x=x: shm.infer("nosd/identity", {"x": x}), args.repeat),
                        "shm_view_ms": median_ms(
                            lambda x=x: shm.infer("nosd/identity", {"x": x}, zero_copy=True), args.repeat
                        ),
                    }
                )
            http.close()
            shm.close()
            triton.close()
        finally:
            d.stop()
    benchkit.save(args.out, "bench_shm", rows, plot(rows))
    head = f"{'MB':>4} {'2x memcpy':>10} {'msgpack':>10} {'binary':>10} {'shm':>10} {'shm view':>10}"
    print(f"\n{head}   shm/floor  view/floor  msgpack/shm  binary/shm")
    for r in rows:
        print(
            f"{r['mb']:>4} {r['floor_ms']:>8.2f}ms {r['msgpack_ms']:>8.2f}ms {r['binary_ms']:>8.2f}ms "
            f"{r['shm_ms']:>8.2f}ms {r['shm_view_ms']:>8.2f}ms   {r['shm_ms'] / r['floor_ms']:>9.2f}"
            f"  {r['shm_view_ms'] / r['floor_ms']:>10.2f}  {r['msgpack_ms'] / r['shm_ms']:>11.1f}"
            f"  {r['binary_ms'] / r['shm_ms']:>10.1f}"
        )


def plot(rows: list[dict]) -> Any:
    fig, ax = benchkit.subplots(figsize=(7, 4))
    x = np.arange(len(rows))
    bars = [
        ("floor_ms", "2x memcpy (floor)"),
        ("shm_view_ms", "shm, zero_copy"),
        ("shm_ms", "shm"),
        ("binary_ms", "binary HTTP"),
        ("msgpack_ms", "msgpack HTTP"),
    ]
    for i, (key, label) in enumerate(bars):
        ax.bar(x + (i - 2) * 0.16, [r[key] for r in rows], 0.16, label=label)
    ax.set_xticks(x, [f"{r['mb']} MB" for r in rows])
    ax.set_yscale("log")
    ax.set_ylabel("round trip, ms (log)")
    ax.set_title("nosd/identity round trip by transport")
    ax.legend()
    return fig


if __name__ == "__main__":
    main()
