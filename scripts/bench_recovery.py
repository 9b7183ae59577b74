"""Recovery: throughput before and after a worker process is SIGKILLed under steady load.

Clients (``--clients`` concurrent, each sending ``custom/waiter`` requests of ``--service-ms`` back to back, with
``retries``) load one replica; after ``--kill-at`` seconds the replica's worker process gets SIGKILL. Ray restarts
the actor (the model loads again in its ``__init__``) and nosd resumes dispatching to it. Printed: throughput
before the kill (the baseline, same run), how long until the first request succeeds on the new process, how long
until throughput is back to 80% of the baseline, throughput over the last seconds and its ratio to the baseline,
and the requests that failed even with retries (should be 0). A second, shorter run without retries counts what
clients see then: every failure should be a 503 (retryable). Writes bench-out/recovery.json and recovery.png.

    .venv/bin/python scripts/bench_recovery.py
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import tempfile
import time
from pathlib import Path

import numpy as np

import benchkit
from nosclient import AsyncClient, Client, NosdError
from nosd.testing import ROOT, start_daemon

MODEL = "custom/waiter"


async def load(url: str, args: argparse.Namespace, retries: int, seconds: float) -> dict:
    """Run the clients for SECONDS, SIGKILL the worker at --kill-at; return completion times, pids, failures."""
    with Client(url) as c:
        pid = int(c.infer(MODEL, {"ms": np.array([0], np.float32)})["pid"][0])
    done: list[tuple[float, int]] = []
    failures: list[int] = []
    t0 = time.monotonic()
    stop = t0 + seconds
    loop = asyncio.get_running_loop()
    loop.call_later(args.kill_at, os.kill, pid, signal.SIGKILL)
    async with AsyncClient(url, retries=retries, backoff_s=0.1) as c:

        async def client() -> None:
            while time.monotonic() < stop:
                try:
                    out = await c.infer(MODEL, {"ms": np.array([args.service_ms], np.float32)})
                    done.append((time.monotonic() - t0, int(out["pid"][0])))
                except NosdError as e:
                    failures.append(e.status)

        await asyncio.gather(*(client() for _ in range(args.clients)))
    return {"killed_pid": pid, "done": done, "failures": failures}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--kill-at", type=float, default=4.0)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--service-ms", type=float, default=5.0)
    p.add_argument("--bin-s", type=float, default=0.25)
    p.add_argument("--out", type=Path, default=Path("bench-out"))
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        d = start_daemon(
            Path(tmp),
            *("--model-module", str(ROOT / "tests" / "custom_models.py"), "--models", MODEL),
            *("--profile-seconds", "0.05", "--profile-sweep", "1"),
        )
        try:
            print(f"loading with {args.clients} clients for {args.seconds:g} s, SIGKILL at {args.kill_at:g} s ...")
            run = asyncio.run(load(d.url, args, retries=8, seconds=args.seconds))
            print("again without client retries, to see what clients get ...")
            bare = asyncio.run(load(d.url, args, retries=0, seconds=args.kill_at + 5.0))
        finally:
            d.stop()

    times = np.array([t for t, _ in run["done"]])
    bins = np.arange(0.0, args.seconds + args.bin_s, args.bin_s)
    rate = np.histogram(times, bins)[0] / args.bin_s
    # The baseline skips the first second (connections warming up) and ends at the kill.
    before = float(((times > 1.0) & (times < args.kill_at)).sum() / (args.kill_at - 1.0))
    tail = 3.0
    after = float((times > args.seconds - tail).sum() / tail)
    new = [t for t, pid in run["done"] if pid != run["killed_pid"]]
    first_new = min(new) - args.kill_at if new else None
    starts = bins[:-1]
    back = [s for s, r in zip(starts, rate, strict=True) if s > args.kill_at and r >= 0.8 * before]
    recovered = back[0] + args.bin_s - args.kill_at if back else None
    result = {
        "clients": args.clients,
        "service_ms": args.service_ms,
        "before_per_s": round(before, 1),
        "after_per_s": round(after, 1),
        "after_over_before": round(after / before, 2) if before else None,
        "first_success_on_new_process_s": round(first_new, 2) if first_new is not None else None,
        "back_to_80pct_s": round(recovered, 2) if recovered is not None else None,
        "failed_with_retries": len(run["failures"]),
        "without_retries": {
            "served": len(bare["done"]),
            "failures_by_status": {str(s): bare["failures"].count(s) for s in sorted(set(bare["failures"]))},
        },
    }
    print(
        f"before the kill: {before:.1f} req/s (baseline); last {tail:g} s: {after:.1f} req/s "
        f"(x{result['after_over_before']} of baseline)"
    )
    print(
        f"first success on the new process {result['first_success_on_new_process_s']} s after the kill; "
        f"back to 80% of baseline after {result['back_to_80pct_s']} s"
    )
    print(f"failed even with retries: {result['failed_with_retries']}")
    print(f"without retries: {result['without_retries']}")
    fig, ax = benchkit.subplots(figsize=(8, 4))
    ax.step(starts, rate, where="post", label=f"served req/s ({args.bin_s:g} s bins)")
    ax.axvline(args.kill_at, color="r", ls="--", label="SIGKILL of the worker")
    ax.axhline(before, color="gray", ls=":", label="baseline before the kill")
    ax.set_xlabel("seconds")
    ax.set_ylabel("requests/s")
    ax.legend(loc="lower right")
    ax.set_title(f"nosd: worker killed under load ({args.clients} clients, {args.service_ms:g} ms requests)")
    benchkit.save(args.out, "recovery", result, fig)


if __name__ == "__main__":
    main()
