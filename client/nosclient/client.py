"""nosd clients: the same calls, blocking (``Client``) or as coroutines (``AsyncClient``).

Both speak msgpack and share every line that is not I/O (request building and
response parsing live in module functions below), so they cannot drift apart.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np

from nosclient.codec import MSGPACK, content_type_of, decode_tensor, dumps, encode_tensor, loads

TRANSPORTS = ("http",)
_HEADERS = {"Content-Type": MSGPACK, "Accept": MSGPACK}
_ids = itertools.count()


class NosdError(Exception):
    """Any failed call: ``status`` is the HTTP status, ``message`` the server's explanation."""

    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


@dataclass
class InferResult:
    outputs: dict[str, Any]
    parameters: dict[str, Any] = field(default_factory=dict)
    id: str = ""


def _model_path(model: str) -> str:
    return "/v2/models/" + quote(model, safe="/")


def _infer_body(inputs: dict[str, Any], outputs: list[str] | None, parameters: dict[str, Any]) -> bytes:
    tensors = []
    for name, value in inputs.items():
        arr = value if isinstance(value, np.ndarray) else np.asarray(value, dtype=object if _is_bytes(value) else None)
        tensors.append(encode_tensor(name, arr, binary=True))
    req: dict[str, Any] = {"id": str(next(_ids)), "inputs": tensors}
    if outputs:
        req["outputs"] = [{"name": o} for o in outputs]
    if parameters:
        req["parameters"] = parameters
    return dumps(req, MSGPACK)


def _is_bytes(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and bool(value) and isinstance(value[0], (bytes, str))


def _parse(resp: httpx.Response) -> Any:
    ctype = content_type_of(resp.headers.get("content-type"))
    try:
        body = loads(resp.content, ctype) if resp.content else {}
    except ValueError:
        body = {"error": resp.text}
    if resp.status_code >= 400:
        msg = body.get("error", resp.text) if isinstance(body, dict) else resp.text
        raise NosdError(resp.status_code, str(msg))
    return body


def _infer_result(body: dict[str, Any]) -> InferResult:
    outputs: dict[str, Any] = {}
    for t in body.get("outputs", []):
        name, arr = decode_tensor(t)
        outputs[name] = arr.reshape(-1).tolist() if arr.dtype == object else arr
    return InferResult(outputs, body.get("parameters", {}), body.get("id", ""))


def _check_transport(transport: str) -> None:
    if transport not in TRANSPORTS:
        raise ValueError(f"transport={transport!r} is not available; choose one of {TRANSPORTS}")


class Client:
    """Blocking client. ``infer`` returns ``{output_name: ndarray}`` (BYTES outputs as lists of bytes)."""

    def __init__(self, url: str = "http://127.0.0.1:8000", timeout: float = 300.0, transport: str = "http"):
        _check_transport(transport)
        self.transport = transport
        self._http = httpx.Client(base_url=url, timeout=timeout, headers=_HEADERS)

    def infer(self, model: str, inputs: dict[str, Any], outputs: list[str] | None = None, **parameters: Any):
        return self.infer_result(model, inputs, outputs, **parameters).outputs

    def infer_result(
        self, model: str, inputs: dict[str, Any], outputs: list[str] | None = None, **parameters: Any
    ) -> InferResult:
        """Like ``infer`` but also returns the response parameters (batch_size, queue_ms, compute_ms, ...)."""
        body = _infer_body(inputs, outputs, parameters)
        return _infer_result(_parse(self._http.post(_model_path(model) + "/infer", content=body)))

    def models(self) -> list[dict[str, Any]]:
        return _parse(self._http.get("/v2/models"))["models"]

    def metadata(self, model: str) -> dict[str, Any]:
        return _parse(self._http.get(_model_path(model)))

    def load(self, model: str, **parameters: Any) -> dict[str, Any]:
        body = dumps({"parameters": parameters}, MSGPACK)
        return _parse(self._http.post("/v2/repository/models/" + quote(model, safe="/") + "/load", content=body))

    def unload(self, model: str) -> dict[str, Any]:
        return _parse(self._http.post("/v2/repository/models/" + quote(model, safe="/") + "/unload", content=b""))

    def ready(self, model: str | None = None) -> bool:
        path = _model_path(model) + "/ready" if model else "/v2/health/ready"
        return self._http.get(path).status_code == 200

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient:
    """The same calls as ``Client``, as coroutines on one pooled HTTP/1.1 connection set."""

    def __init__(self, url: str = "http://127.0.0.1:8000", timeout: float = 300.0, transport: str = "http"):
        _check_transport(transport)
        self.transport = transport
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
        self._http = httpx.AsyncClient(base_url=url, timeout=timeout, headers=_HEADERS, limits=limits)

    async def infer(self, model: str, inputs: dict[str, Any], outputs: list[str] | None = None, **parameters: Any):
        return (await self.infer_result(model, inputs, outputs, **parameters)).outputs

    async def infer_result(
        self, model: str, inputs: dict[str, Any], outputs: list[str] | None = None, **parameters: Any
    ) -> InferResult:
        body = _infer_body(inputs, outputs, parameters)
        return _infer_result(_parse(await self._http.post(_model_path(model) + "/infer", content=body)))

    async def models(self) -> list[dict[str, Any]]:
        return _parse(await self._http.get("/v2/models"))["models"]

    async def metadata(self, model: str) -> dict[str, Any]:
        return _parse(await self._http.get(_model_path(model)))

    async def load(self, model: str, **parameters: Any) -> dict[str, Any]:
        body = dumps({"parameters": parameters}, MSGPACK)
        path = "/v2/repository/models/" + quote(model, safe="/") + "/load"
        return _parse(await self._http.post(path, content=body))

    async def unload(self, model: str) -> dict[str, Any]:
        path = "/v2/repository/models/" + quote(model, safe="/") + "/unload"
        return _parse(await self._http.post(path, content=b""))

    async def ready(self, model: str | None = None) -> bool:
        path = _model_path(model) + "/ready" if model else "/v2/health/ready"
        return (await self._http.get(path)).status_code == 200

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
