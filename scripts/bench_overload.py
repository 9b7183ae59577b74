"""Overload: what a bounded queue does when clients offer more than a model can serve.

A model with a fixed service time (``custom/waiter`` from tests/custom_models.py: 20 ms per batch, batch size 1,
one replica: capacity ~50 requests/s) gets open-loop Poisson arrivals at several rates, each for a few seconds,
on a daemon with ``--max-queue-size 8``. For each offered rate: served/s, the share answered 503 (with
Retry-After), and p50/p99 latency of the served requests. Baselines in the same run: the measured capacity
(closed loop, one client at a time), and the same overload (100/s) on a daemon whose queue is unbounded, where
p99 grows with the backlog instead of staying near (queue + in flight) x service time.
Writes bench-out/overload.json and bench-out/overload.png.

    .venv/bin/python scripts/bench_overload.py
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

import benchkit
from nosclient import AsyncClient, NosdError
from nosd.testing import ROOT, start_daemon

MODEL = "custom/waiter"
SERVICE_MS = 20.0


async def capacity(url: str, seconds: float) -> float:
    async with AsyncClient(url) as c:
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            await c.infer(MODEL, {"ms": np.array([SERVICE_MS], np.float32)})
            n += 1
        return n / (time.perf_counter() - t0)


async def offered(url: str, rate: float, seconds: float) -> dict:
    latencies: list[float] = []
    refused = other = 0
    rng = random.Random(0)

    async with AsyncClient(url) as c:

        async def one() -> None:
            nonlocal refused, other
            t0 = time.perf_counter()
            try:
                await c.infer(MODEL, {"ms": np.array([SERVICE_MS], np.float32)})
                latencies.append(time.perf_counter() - t0)
            except NosdError as e:
                if e.status == 503:
                    refused += 1
                else:
                    other += 1

        tasks = []
        start = time.perf_counter()
        t = 0.0
        while t < seconds:
            t += rng.expovariate(rate)
            await asyncio.sleep(max(0.0, start + t - time.perf_counter()))
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    lat = np.array(latencies) * 1e3
    return {
        "offered_per_s": rate,
        "sent": len(tasks),
        "served_per_s": round(len(latencies) / elapsed, 1),
        "refused_share": round(refused / len(tasks), 3),
        "other_errors": other,
        "p50_ms": round(float(np.percentile(lat, 50)), 1) if len(lat) else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 1) if len(lat) else None,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--rates", default="20,40,60,100,200,400")
    p.add_argument("--max-queue-size", type=int, default=8)
    p.add_argument("--out", type=Path, default=Path("bench-out"))
    args = p.parse_args()
    rates = [float(r) for r in args.rates.split(",")]

    def daemon(tmp: str, queue: int):
        return start_daemon(
            Path(tmp),
            *("--model-module", str(ROOT / "tests" / "custom_models.py"), "--models", MODEL),
            *("--max-queue-size", str(queue), "--profile-seconds", "0.05", "--profile-sweep", "1"),
        )

    with tempfile.TemporaryDirectory() as tmp:
        d = daemon(tmp, args.max_queue_size)
        try:
            cap = asyncio.run(capacity(d.url, 3.0))
            rows = [asyncio.run(offered(d.url, r, args.seconds)) for r in tqdm(rates, desc="offered rates")]
        finally:
            d.stop()
        # The same overload without a bound (a queue of 1e6): what the bound saves.
        d = daemon(tmp, 1_000_000)
        try:
            unbounded = asyncio.run(offered(d.url, 100.0, args.seconds))
        finally:
            d.stop()
    print(f"capacity (closed loop, 1 client): {cap:.1f} req/s; --max-queue-size {args.max_queue_size}")
    print(f"{'offered/s':>9} {'served/s':>9} {'503 share':>9} {'p50 ms':>7} {'p99 ms':>7} {'served/capacity':>15}")
    for r in rows:
        print(
            f"{r['offered_per_s']:>9.0f} {r['served_per_s']:>9.1f} {r['refused_share']:>9.1%} "
            f"{r['p50_ms']:>7} {r['p99_ms']:>7} {r['served_per_s'] / cap:>15.2f}"
        )
    print(
        f"unbounded queue at 100/s offered: served {unbounded['served_per_s']}/s, 503 share "
        f"{unbounded['refused_share']:.0%}, p50 {unbounded['p50_ms']} ms, p99 {unbounded['p99_ms']} ms"
    )
    result = {"capacity_per_s": cap, "rows": rows, "unbounded_at_100_per_s": unbounded}
    fig, (a, b) = benchkit.subplots(1, 2, figsize=(10, 4))
    xs = [r["offered_per_s"] for r in rows]
    a.plot(xs, [r["served_per_s"] for r in rows], marker="o", label="served")
    a.axhline(cap, color="gray", ls="--", label="capacity (closed loop)")
    a.set_xlabel("offered requests/s")
    a.set_ylabel("served requests/s")
    a2 = a.twinx()
    a2.plot(xs, [100 * r["refused_share"] for r in rows], color="r", marker="x", label="503 share")
    a2.set_ylabel("% answered 503")
    a.legend(loc="upper left")
    b.plot(xs, [r["p50_ms"] for r in rows], marker="o", label="p50")
    b.plot(xs, [r["p99_ms"] for r in rows], marker="o", label="p99")
    b.set_xlabel("offered requests/s")
    b.set_ylabel("latency of served requests, ms")
    b.legend()
    fig.suptitle(f"nosd under overload: {SERVICE_MS:g} ms/request model, --max-queue-size {args.max_queue_size}")
    benchkit.save(args.out, "overload", result, fig)


if __name__ == "__main__":
    main()
