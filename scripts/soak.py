"""Soak: 100,000 requests through a real daemon; the daemon's resident memory must grow less than 5%.

Sends small ``nosd/identity`` requests from concurrent async clients, samples the resident memory of the daemon
process (and, for the record, of its Ray workers) every 5,000 requests; the baseline is taken after a warm-up.
Prints the figures, writes bench-out/soak.json and bench-out/soak.png.

    .venv/bin/python scripts/soak.py [--requests 100000] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

import benchkit
from nosclient import AsyncClient
from nosd.testing import start_daemon


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return 0.0


def session_rss_mb(sid: int, exclude: int) -> float:
    out = subprocess.run(["ps", "-eo", "pid=,sid=,rss="], capture_output=True, text=True).stdout
    return sum(
        int(r) / 1024 for p, s, r in (line.split() for line in out.splitlines()) if int(s) == sid and int(p) != exclude
    )


async def run(url: str, total: int, concurrency: int, pid: int, every: int) -> tuple[list[dict], int, float]:
    samples: list[dict] = []
    sent = done = failures = 0
    bar = tqdm(total=total, unit="req", desc="soak")
    x = np.arange(16, dtype=np.float32)[None]
    t0 = time.perf_counter()
    async with AsyncClient(url) as c:

        async def worker() -> None:
            nonlocal sent, done, failures
            while sent < total:
                sent += 1
                try:
                    await c.infer("nosd/identity", {"x": x})
                except Exception:
                    failures += 1
                done += 1
                bar.update(1)
                if done % every == 0:
                    samples.append({"requests": done, "daemon_mb": rss_mb(pid), "workers_mb": session_rss_mb(pid, pid)})

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    bar.close()
    return samples, failures, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=100_000)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--warmup", type=int, default=5_000)
    p.add_argument("--out", type=Path, default=Path("bench-out"))
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = start_daemon(Path(tmp), "--models", "nosd/identity")
        try:
            pid = d.proc.pid
            asyncio.run(run(d.url, args.warmup, args.concurrency, pid, args.warmup))
            base = {"requests": 0, "daemon_mb": rss_mb(pid), "workers_mb": session_rss_mb(pid, pid)}
            samples, failures, seconds = asyncio.run(run(d.url, args.requests, args.concurrency, pid, 5_000))
        finally:
            d.stop()
    samples = [base, *samples]
    growth = samples[-1]["daemon_mb"] / base["daemon_mb"] - 1
    result = {
        "requests": args.requests,
        "failures": failures,
        "seconds": round(seconds, 1),
        "requests_per_s": round(args.requests / seconds),
        "daemon_rss_growth": round(growth, 4),
        "samples": samples,
    }
    print(
        f"{args.requests} requests in {seconds:.0f} s ({args.requests / seconds:.0f}/s, {failures} failed); daemon RSS "
        f"{base['daemon_mb']:.1f} -> {samples[-1]['daemon_mb']:.1f} MB ({100 * growth:+.2f}%), Ray processes "
        f"{base['workers_mb']:.0f} -> {samples[-1]['workers_mb']:.0f} MB"
    )
    fig, ax = benchkit.subplots(figsize=(7, 4))
    xs = [s["requests"] for s in samples]
    ax.plot(xs, [s["daemon_mb"] for s in samples], marker="o", label="daemon (aiohttp + Ray driver)")
    ax.axhline(base["daemon_mb"] * 1.05, color="r", ls="--", lw=1, label="baseline + 5%")
    ax.set_xlabel("requests after warm-up")
    ax.set_ylabel("resident memory, MB")
    ax.set_title(f"nosd soak: {args.requests} nosd/identity requests, {args.concurrency} concurrent")
    ax.legend()
    benchkit.save(args.out, "soak", result, fig)
    if growth >= 0.05 or failures:
        raise SystemExit("soak failed: RSS growth >= 5% or failed requests")


if __name__ == "__main__":
    main()
