"""nosd clients: the same calls, blocking (``Client``) or as coroutines (``AsyncClient``).

Only the I/O lives here: each class drives the shared flows (``nosclient.flows``) with its own HTTP library
and its own way to sleep between retries.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import quote

import httpx

from nosclient.flows import Call, Flow, Flows, InferResult, NosdError, Reply, Sleep, T, headers_for, model_path

__all__ = ["AsyncClient", "Client", "InferResult", "NosdError"]


class Client(Flows):
    """Blocking client. ``infer`` returns ``{output_name: ndarray}`` (BYTES outputs as object arrays of bytes,
    like tritonclient's ``as_numpy``).

    ``transport``: ``"http"`` (tensors in the msgpack body), ``"shm"`` (tensors in shared memory, same host
    only), or ``"auto"`` (shm when a probe proves the server sees this host's /dev/shm, else http).
    ``token``: the daemon's ``--auth-token``. ``retries``: how many times a call that got a 503 or lost its
    connection is repeated (after the server's Retry-After, or exponential backoff); 0 by default, because
    only the caller knows whether its model is safe to run twice.
    """

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        timeout: float = 300.0,
        transport: str = "http",
        token: str | None = None,
        retries: int = 0,
        backoff_s: float = 0.1,
    ):
        super().__init__(transport, retries, backoff_s)
        self._http = httpx.Client(base_url=url, timeout=timeout, headers=headers_for(token))
        if transport == "auto":
            self._settle(self._run(self._probe_flow()))

    def _run(self, flow: Flow[T]) -> T:
        steps = self._retrying(flow)
        try:
            step = next(steps)
            while True:
                if isinstance(step, Sleep):
                    time.sleep(step.seconds)
                    step = steps.send(None)
                    continue
                try:
                    resp = self._http.request(step[0], step[1], content=step[2])
                except httpx.HTTPError as e:
                    step = steps.throw(e)
                    continue
                step = steps.send(resp)
        except StopIteration as done:
            return done.value

    def infer(
        self,
        model: str,
        inputs: dict[str, Any],
        outputs: list[str] | None = None,
        zero_copy: bool = False,
        **parameters: Any,
    ) -> dict[str, Any]:
        """``zero_copy`` (shm transport): outputs are read-only views of their regions, valid until the next call."""
        return self.infer_result(model, inputs, outputs, zero_copy, **parameters).outputs

    def infer_result(
        self,
        model: str,
        inputs: dict[str, Any],
        outputs: list[str] | None = None,
        zero_copy: bool = False,
        **parameters: Any,
    ) -> InferResult:
        """Like ``infer`` but also returns the response parameters (batch_size, queue_ms, compute_ms, ...)."""
        return self._run(self._infer_flow(model, inputs, outputs, zero_copy, parameters))

    def models(self) -> list[dict[str, Any]]:
        return self._run(self._call_flow("GET", "/v2/models"))["models"]

    def metadata(self, model: str) -> dict[str, Any]:
        return self._run(self._call_flow("GET", model_path(model)))

    def load(self, model: str, **parameters: Any) -> dict[str, Any]:
        return self._run(self._load_flow(model, parameters))

    def unload(self, model: str) -> dict[str, Any]:
        return self._run(self._call_flow("POST", "/v2/repository/models/" + quote(model, safe="/") + "/unload", b""))

    def ready(self, model: str | None = None) -> bool:
        return self._run(self._ready_flow(model))

    def close(self) -> None:
        """Unregister and unlink this client's regions, close the connections."""
        self._run(self._close_flow())
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(Flows):
    """The same calls as ``Client``, as coroutines. ``transport="auto"`` probes on the first call.

    Its HTTP is aiohttp, not httpx: on this 2-core machine httpx's async connection pool took ~4 ms of CPU per
    request at 16 concurrent calls (its pool scans every connection for each request), capping a client process
    near 240 requests/s where aiohttp's reaches ~1,600. Connection failures surface as the same httpx
    exceptions the blocking client raises.
    """

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        timeout: float = 300.0,
        transport: str = "http",
        token: str | None = None,
        retries: int = 0,
        backoff_s: float = 0.1,
    ):
        super().__init__(transport, retries, backoff_s)
        self._url, self._timeout, self._headers = url.rstrip("/"), timeout, headers_for(token)
        self._session: Any = None  # an aiohttp.ClientSession, made inside the running loop on first use

    async def _request(self, call: Call) -> Reply:
        import aiohttp
        from yarl import URL

        if self._session is None:
            self._session = aiohttp.ClientSession(
                headers=self._headers,
                timeout=aiohttp.ClientTimeout(total=self._timeout),
                connector=aiohttp.TCPConnector(limit=256),
            )
        method, path, body = call
        try:
            async with self._session.request(method, URL(self._url + path, encoded=True), data=body) as r:
                return Reply(r.status, r.headers, await r.read())
        except TimeoutError:
            raise httpx.ReadTimeout(f"no answer from {self._url} within {self._timeout} s") from None
        except aiohttp.ClientConnectorError as e:
            raise httpx.ConnectError(str(e)) from None
        except aiohttp.ServerDisconnectedError as e:
            raise httpx.RemoteProtocolError(str(e)) from None
        except aiohttp.ClientError as e:
            raise httpx.ReadError(str(e)) from None

    async def _run(self, flow: Flow[T]) -> T:
        steps = self._retrying(flow)
        try:
            step = next(steps)
            while True:
                if isinstance(step, Sleep):
                    await asyncio.sleep(step.seconds)
                    step = steps.send(None)
                    continue
                try:
                    resp = await self._request(step)
                except httpx.HTTPError as e:
                    step = steps.throw(e)
                    continue
                step = steps.send(resp)
        except StopIteration as done:
            return done.value

    async def infer(
        self,
        model: str,
        inputs: dict[str, Any],
        outputs: list[str] | None = None,
        zero_copy: bool = False,
        **parameters: Any,
    ) -> dict[str, Any]:
        return (await self.infer_result(model, inputs, outputs, zero_copy, **parameters)).outputs

    async def infer_result(
        self,
        model: str,
        inputs: dict[str, Any],
        outputs: list[str] | None = None,
        zero_copy: bool = False,
        **parameters: Any,
    ) -> InferResult:
        return await self._run(self._infer_flow(model, inputs, outputs, zero_copy, parameters))

    async def models(self) -> list[dict[str, Any]]:
        return (await self._run(self._call_flow("GET", "/v2/models")))["models"]

    async def metadata(self, model: str) -> dict[str, Any]:
        return await self._run(self._call_flow("GET", model_path(model)))

    async def load(self, model: str, **parameters: Any) -> dict[str, Any]:
        return await self._run(self._load_flow(model, parameters))

    async def unload(self, model: str) -> dict[str, Any]:
        path = "/v2/repository/models/" + quote(model, safe="/") + "/unload"
        return await self._run(self._call_flow("POST", path, b""))

    async def ready(self, model: str | None = None) -> bool:
        return await self._run(self._ready_flow(model))

    async def close(self) -> None:
        await self._run(self._close_flow())
        if self._session is not None:
            await self._session.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
