"""``nosd``: flags -> Ray -> the aiohttp app; signals drain it and stop what it started."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import signal
import sys
from pathlib import Path

import ray
import uvloop
from aiohttp import web

from nosd import autoscale, hub, logs
from nosd.errors import NosdError
from nosd.manager import ModelManager
from nosd.memory import parse_budget
from nosd.server import READY, Settings, make_app, sweep_regions
from nosd.weights import fetch, files_dir

log = logging.getLogger("nosd")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="nosd", description="Serve PyTorch vision models over KServe v2 (msgpack/JSON).")
    p.add_argument(
        "--exit-on-error",
        action="store_true",
        help="exit when a model named by --models fails to load (default: log it and serve the rest)",
    )
    p.add_argument(
        "--runtime",
        choices=["auto", "cpu", "gpu"],
        default="auto",
        help="where workers run; auto = GPU when Ray sees one",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--models", default="", help="comma-separated model ids to load before reporting ready")
    custom_flags(p)
    p.add_argument(
        "--ray-address",
        default=None,
        help="join this Ray cluster (left running on exit); default: start an embedded local Ray",
    )
    p.add_argument("--ray-cpus", type=float, default=None, help="CPUs of the embedded Ray (default: all cores)")
    p.add_argument("--max-body-mb", type=float, default=256.0, help="largest request body accepted (413 above)")
    p.add_argument("--no-shm", dest="shm", action="store_false", help="disable the v2 system shared-memory extension")
    p.add_argument("--max-inflight", type=int, default=2, help="batches in flight per replica")
    p.add_argument(
        "--compiled-graph",
        dest="compiled",
        action="store_true",
        help="call workers through Ray Compiled Graphs: ~1 ms less per call, but Ray 2.60's channels "
        "busy-poll (about 2 cores per replica at 100%%, even idle); see docs/performance.md",
    )
    p.add_argument(
        "--memory-budget",
        default=None,
        help="memory for models per device: a fraction (0.8) or a size (8GB); default 0.8 of a GPU, 0.5 of RAM on CPU",
    )
    p.add_argument(
        "--eviction",
        choices=["fifo", "lru"],
        default="fifo",
        help="which loaded model makes room for a new one: the oldest load, or the least recently used",
    )
    p.add_argument(
        "--profile-seconds",
        type=float,
        default=1.0,
        help="time per batch size when a model is profiled on its first load",
    )
    p.add_argument(
        "--profile-sweep",
        default="1,2,4,8,16,32",
        help="batch sizes measured when a model is profiled (comma-separated)",
    )
    p.add_argument("--autoscale-up-s", type=float, default=2.0, help="queue above target this long adds a replica")
    p.add_argument("--autoscale-down-s", type=float, default=10.0, help="idle this long removes a replica")
    p.add_argument("--grace-s", type=float, default=30.0, help="how long shutdown waits for in-flight requests")
    p.add_argument(
        "--max-queue-size",
        type=int,
        default=512,
        help="requests that may wait per model (a spec's max_queue_size wins); beyond it 503 + Retry-After",
    )
    p.add_argument(
        "--timeout-ms",
        type=float,
        default=None,
        help="default deadline of a request in the queue (the timeout_ms request parameter overrides); 504 after it",
    )
    p.add_argument("--max-elements", type=int, default=2**28, help="largest element count of one input tensor")
    p.add_argument(
        "--auth-token",
        default=os.environ.get("NOSD_AUTH_TOKEN"),
        help="require 'Authorization: Bearer TOKEN' on every route but health (default: $NOSD_AUTH_TOKEN)",
    )
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--log-format", choices=["text", "json"], default="text", help="json: one object per line")
    return p.parse_args(argv)


def custom_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model-module", action="append", default=[], help="a .py file or module defining custom models (repeatable)"
    )
    p.add_argument(
        "--model-config", action="append", default=[], help="a YAML or TOML file with a 'models' list (repeatable)"
    )


def register_custom(args: argparse.Namespace) -> None:
    try:
        specs = [s for m in args.model_module for s in hub.load_module(m)]
        specs += [s for c in args.model_config for s in hub.load_config(c)]
    except NosdError as e:
        raise SystemExit(f"nosd: {e}") from None
    for spec in specs:
        log.info("registered custom model %s", spec.id)


def start_ray(address: str | None, cpus: float | None) -> Path | None:
    """Join a cluster, or start an embedded Ray; for the embedded one, return its session directory."""
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
        return None
    # "local" forces a fresh embedded instance; the dashboard would cost ~1 GB and 10 processes here.
    ctx = ray.init(
        address="local", include_dashboard=False, num_cpus=cpus, logging_level=logging.WARNING, log_to_driver=True
    )
    return Path(ctx.address_info["session_dir"])


def stop_ray(session_dir: Path | None) -> None:
    """Stop an embedded Ray and delete the environments it built for models with ``pip`` requirements: Ray
    clones the daemon's whole virtualenv for each (gigabytes, with torch) and keeps it after its session ends.
    Ray's logs in the session directory stay. A joined cluster is left alone."""
    if session_dir is None:
        return
    ray.shutdown()
    shutil.rmtree(session_dir / "runtime_resources", ignore_errors=True)


def exposure_warning(host: str, token: str | None) -> str | None:
    """A daemon reachable beyond this machine without a token lets anyone run and unload models: say so."""
    import ipaddress

    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if loopback or token:
        return None
    return f"listening on {host} without --auth-token: anyone who can reach this port can run and unload models"


def pick_device(runtime: str) -> str:
    gpus = ray.cluster_resources().get("GPU", 0)
    if runtime == "gpu" and gpus < 1:
        raise SystemExit("nosd: --runtime gpu, but Ray sees no GPU (check nvidia-smi and CUDA_VISIBLE_DEVICES)")
    return "cuda" if runtime == "gpu" or (runtime == "auto" and gpus >= 1) else "cpu"


async def serve(args: argparse.Namespace) -> None:
    device = pick_device(args.runtime)
    manager = ModelManager(
        device,
        parse_budget(args.memory_budget, device),
        max_inflight=args.max_inflight,
        compiled=args.compiled,
        eviction=args.eviction,
        profile_seconds=args.profile_seconds,
        max_queue_size=args.max_queue_size,
    )
    settings = Settings(
        max_body_bytes=int(args.max_body_mb * 2**20),
        max_elements=args.max_elements,
        default_timeout_s=args.timeout_ms / 1e3 if args.timeout_ms else None,
        auth_token=args.auth_token or None,
    )
    app = make_app(manager, settings, shm=args.shm)
    # handler_cancellation: a client that disconnects cancels its handler, so its queued work is dropped.
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=args.grace_s, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port, backlog=1024)
    await site.start()
    log.info("listening on http://%s:%d (runtime %s)", args.host, args.port, device)
    if warning := exposure_warning(args.host, settings.auth_token):
        log.warning(warning)

    sweeper = asyncio.create_task(sweep_regions(app)) if args.shm else None
    scaler = asyncio.create_task(
        autoscale.run(manager, autoscale.Policy(up_after_s=args.autoscale_up_s, down_after_s=args.autoscale_down_s))
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        for model_id in filter(None, (m.strip() for m in args.models.split(","))):
            try:
                await manager.ensure(model_id)
            except NosdError as e:  # serve the others; GET /v2/models/{id} shows the error
                if args.exit_on_error:
                    raise
                log.error("--models %s could not be loaded (serving the rest): %s", model_id, e)
        app[READY]["ready"] = True
        log.info("ready")
        await stop.wait()
    finally:
        log.info("shutting down: draining requests")
        app[READY]["ready"] = False
        scaler.cancel()
        if sweeper:
            sweeper.cancel()
        await runner.cleanup()  # stops listening, waits for in-flight handlers up to --grace-s
        await manager.close()


def profile_main(argv: list[str]) -> None:
    """``nosd profile MODEL``: measure a model in this process, print the table, store it in the catalog."""
    p = argparse.ArgumentParser(prog="nosd profile", description=profile_main.__doc__)
    p.add_argument("model")
    p.add_argument("--runtime", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--seconds", type=float, default=2.0, help="time per batch size")
    custom_flags(p)
    args = p.parse_args(argv)
    from tqdm import tqdm

    from nosd import engines
    from nosd.profile import baseline_rss, measure, save_profile
    from nosd.worker import init_args, resolve

    register_custom(args)
    try:
        spec = hub.get(args.model)
    except NosdError as e:
        raise SystemExit(f"nosd profile: {e}") from None
    device = "cuda" if args.runtime == "gpu" else "cpu"
    before = baseline_rss()
    print(f"loading {spec.id} on {device} ...", file=sys.stderr)
    engines.configure(os.cpu_count() or 1)
    try:
        model = resolve(spec.entrypoint)(device, **init_args(spec))
    except NosdError as e:
        raise SystemExit(f"nosd profile: {e}") from None
    prof = measure(
        model,
        spec,
        device,
        before,
        args.seconds,
        progress=lambda sizes: tqdm(sizes, desc=f"profiling {spec.id}", unit="batch size"),
    )
    save_profile(prof)
    print(f"{prof.model} on {prof.device} (torch {prof.torch})")
    print(
        f"  parameters {prof.param_bytes / 1e6:.1f} MB   memory {prof.memory_bytes / 1e6:.1f} MB   "
        f"FLOPs/sample {prof.flops_per_sample:.3g}   best batch size {prof.best_batch_size}"
    )
    print(f"  {'batch':>5} {'samples/s':>10} {'latency ms':>11}")
    for pt in prof.sweep:
        print(f"  {pt.batch_size:>5} {pt.samples_per_s:>10.1f} {pt.latency_ms:>11.1f}")


def pull_main(argv: list[str]) -> None:
    """``nosd pull MODEL``: fetch a model's weights into the local cache, checksums checked."""
    import importlib

    p = argparse.ArgumentParser(prog="nosd pull", description=pull_main.__doc__)
    p.add_argument("model")
    custom_flags(p)
    args = p.parse_args(argv)
    register_custom(args)
    try:
        spec = hub.get(args.model)
        if spec.files:
            for name, f in spec.files.items():
                fetch(f.url, f.sha256, files_dir(spec.id) / name)
                print(f"{files_dir(spec.id) / name}: sha256 ok")
        else:
            target = spec.entrypoint.rpartition(":")[0]
            module = None if target.endswith(".py") else importlib.import_module(target)
            if not hasattr(module, "pull"):
                raise SystemExit(f"nosd pull: {spec.id} has no weights to fetch")
            module.pull(spec)
    except NosdError as e:
        raise SystemExit(f"nosd pull: {e}") from None
    print(f"{spec.id}: weights ready")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["profile"]:
        return profile_main(argv[1:])
    if argv[:1] == ["pull"]:
        return pull_main(argv[1:])
    args = parse_args(argv)
    logs.setup(args.log_level, args.log_format)
    register_custom(args)
    session_dir = start_ray(args.ray_address, args.ray_cpus)
    try:
        uvloop.run(serve(args))
    except NosdError as e:
        raise SystemExit(f"nosd: {e}") from None
    finally:
        stop_ray(session_dir)
        log.info("stopped (pid %d)", os.getpid())


if __name__ == "__main__":
    main()
