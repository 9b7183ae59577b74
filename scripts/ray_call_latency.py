"""How long one Ray hop takes here: plain actor call (ray.get / awaited) vs a Compiled Graph, same payload.

.venv/bin/python scripts/ray_call_latency.py
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import ray
import uvloop
from ray.dag import InputNode

N = 500
PAYLOAD = [{"x": np.zeros((1, 4), np.float32)}]


@ray.remote(num_cpus=0.1)
class Echo:
    def echo(self, x: object) -> object:
        return x


def p50_ms(samples: list[float]) -> float:
    return 1e3 * statistics.median(samples)


async def timed(call) -> list[float]:
    out = []
    for _ in range(N):
        t = time.perf_counter()
        await call()
        out.append(time.perf_counter() - t)
    return out


async def main() -> None:
    a, b = Echo.remote(), Echo.remote()
    await a.echo.remote(1)
    sync = []
    for _ in range(N):
        t = time.perf_counter()
        ray.get(a.echo.remote(PAYLOAD))
        sync.append(time.perf_counter() - t)
    awaited = await timed(lambda: a.echo.remote(PAYLOAD))
    with InputNode() as inp:
        node = b.echo.bind(inp)
    graph = node.experimental_compile(enable_asyncio=True)

    async def compiled():
        return await (await graph.execute_async(PAYLOAD))

    comp = await timed(compiled)
    graph.teardown()
    print(f"plain call, ray.get : p50 {p50_ms(sync):.2f} ms")
    print(f"plain call, awaited : p50 {p50_ms(awaited):.2f} ms")
    print(f"compiled graph      : p50 {p50_ms(comp):.2f} ms")


if __name__ == "__main__":
    ray.init(address="local", include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        uvloop.run(main())
    finally:
        ray.shutdown()
