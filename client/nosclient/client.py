"""nosd clients: the same calls, blocking (``Client``) or as coroutines (``AsyncClient``).

Both speak msgpack and share every line that is not I/O (request building and
response parsing live in module functions below), so they cannot drift apart.
"""

from __future__ import annotations

import atexit
import itertools
import secrets
import weakref
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np

from nosclient import shm
from nosclient.codec import MSGPACK, content_type_of, decode_tensor, dumps, encode_tensor, loads

TRANSPORTS = ("http", "shm", "auto")
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


def _infer_result(body: dict[str, Any], plan: shm.Plan | None = None, copy: bool = True) -> InferResult:
    outputs: dict[str, Any] = {}
    for t in body.get("outputs", []):
        if "data" not in t and plan is not None and t.get("name") in plan.outputs:
            outputs[t["name"]] = shm.read_output(plan.outputs[t["name"]], t, copy)
            continue
        name, arr = decode_tensor(t)
        outputs[name] = arr.reshape(-1).tolist() if arr.dtype == object else arr
    return InferResult(outputs, body.get("parameters", {}), body.get("id", ""))


def _arrays(inputs: dict[str, Any]) -> dict[str, np.ndarray] | None:
    """Inputs as arrays, or None when one of them is BYTES (those travel in the body)."""
    arrays = {
        k: v if isinstance(v, np.ndarray) else np.asarray(v, dtype=object if _is_bytes(v) else None)
        for k, v in inputs.items()
    }
    return None if any(a.dtype.kind in "OSU" for a in arrays.values()) else arrays


def _shm_body(p: shm.Plan, parameters: dict[str, Any]) -> bytes:
    body = {**p.body, "id": str(next(_ids))}
    if parameters:
        body["parameters"] = parameters
    return dumps(body, MSGPACK)


def _register_path(region: str) -> str:
    return f"/v2/systemsharedmemory/region/{region}/register"


def _probe_plan(pool: shm.Pool) -> tuple[np.ndarray, shm.Plan]:
    """A nonce in a fresh region, echoed by nosd/identity over HTTP: equal bytes prove a shared /dev/shm."""
    nonce = np.frombuffer(secrets.token_bytes(16), np.uint8)[None]
    return nonce, shm.plan(pool, {"x": nonce}, {"outputs": [{"name": "y"}]}, None)


def _close_at_exit(ref: weakref.ref) -> None:
    client = ref()
    if client is not None and client._pool is not None:
        client._pool.close()


def _check_transport(transport: str) -> None:
    if transport not in TRANSPORTS:
        raise ValueError(f"transport={transport!r} is not available; choose one of {TRANSPORTS}")


class _Base:
    """What both clients keep: the transport, a shared-memory pool, cached model metadata."""

    def __init__(self, transport: str):
        _check_transport(transport)
        self.transport = transport
        self._pool = shm.Pool() if transport != "http" else None
        self._meta: dict[str, dict[str, Any]] = {}
        self._held: list[shm.Segment] = []  # regions behind the views the last zero_copy call returned
        if self._pool is not None:
            atexit.register(_close_at_exit, weakref.ref(self))

    def _begin(self) -> None:
        """A new call: the views of the previous ``zero_copy`` call end here, their regions go back to the pool."""
        if self._held and self._pool is not None:
            self._pool.release(self._held)
        self._held = []

    def _end(self, p: shm.Plan, zero_copy: bool) -> None:
        assert self._pool is not None
        keep = set(map(id, p.outputs.values())) if zero_copy else set()
        self._pool.release([s for s in p.leases if id(s) not in keep])
        self._held = [s for s in p.leases if id(s) in keep]

    def _settle(self, shm_works: bool) -> None:
        """After the auto probe: keep shared memory, or drop the pool (and the probe's region) for plain HTTP."""
        self.transport = "shm" if shm_works else "http"
        if not shm_works and self._pool is not None:
            self._pool.close()
            self._pool = None


class Client(_Base):
    """Blocking client. ``infer`` returns ``{output_name: ndarray}`` (BYTES outputs as lists of bytes).

    ``transport``: ``"http"`` (tensors in the msgpack body), ``"shm"`` (tensors in shared memory, same host
    only), or ``"auto"`` (shm when a probe proves the server sees this host's /dev/shm, else http).
    """

    def __init__(self, url: str = "http://127.0.0.1:8000", timeout: float = 300.0, transport: str = "http"):
        super().__init__(transport)
        self._http = httpx.Client(base_url=url, timeout=timeout, headers=_HEADERS)
        if transport == "auto":
            self._settle(self._probe())

    def _probe(self) -> bool:
        assert self._pool is not None
        try:
            nonce, p = _probe_plan(self._pool)
            self._register(p.new)
            body = _parse(self._http.post(_model_path("nosd/identity") + "/infer", content=_shm_body(p, {})))
            self._pool.release(p.leases)
            return bool(np.array_equal(_infer_result(body).outputs.get("y"), nonce))
        except (NosdError, httpx.HTTPError, ValueError):
            return False

    def _register(self, segs: list[shm.Segment]) -> None:
        for seg in segs:
            body = dumps({"key": seg.key, "offset": 0, "byte_size": seg.size}, MSGPACK)
            _parse(self._http.post(_register_path(seg.region), content=body))
            seg.registered = True

    def infer(
        self,
        model: str,
        inputs: dict[str, Any],
        outputs: list[str] | None = None,
        zero_copy: bool = False,
        **parameters: Any,
    ):
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
        arrays = _arrays(inputs) if self.transport == "shm" else None
        if arrays is None:
            body = _infer_body(inputs, outputs, parameters)
            return _infer_result(_parse(self._http.post(_model_path(model) + "/infer", content=body)))
        assert self._pool is not None
        if model not in self._meta:
            self._meta[model] = self.metadata(model)
        self._begin()
        p = shm.plan(self._pool, arrays, self._meta[model], outputs)
        ok = False
        try:
            self._register(p.new)
            resp = _parse(self._http.post(_model_path(model) + "/infer", content=_shm_body(p, parameters)))
            result, ok = _infer_result(resp, p, copy=not zero_copy), True
            return result
        finally:
            self._end(p, zero_copy and ok)

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
        """Unregister and unlink this client's regions, close the connections."""
        if self._pool is not None:
            for seg in self._pool.close():
                if seg.registered:
                    try:
                        self._http.post(f"/v2/systemsharedmemory/region/{seg.region}/unregister", content=b"")
                    except httpx.HTTPError:
                        pass  # the server drops registrations of vanished segments by itself
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(_Base):
    """The same calls as ``Client``, as coroutines. ``transport="auto"`` probes on the first call."""

    def __init__(self, url: str = "http://127.0.0.1:8000", timeout: float = 300.0, transport: str = "http"):
        super().__init__(transport)
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
        self._http = httpx.AsyncClient(base_url=url, timeout=timeout, headers=_HEADERS, limits=limits)

    async def _probe(self) -> bool:
        assert self._pool is not None
        try:
            nonce, p = _probe_plan(self._pool)
            await self._register(p.new)
            body = _parse(await self._http.post(_model_path("nosd/identity") + "/infer", content=_shm_body(p, {})))
            self._pool.release(p.leases)
            return bool(np.array_equal(_infer_result(body).outputs.get("y"), nonce))
        except (NosdError, httpx.HTTPError, ValueError):
            return False

    async def _register(self, segs: list[shm.Segment]) -> None:
        for seg in segs:
            body = dumps({"key": seg.key, "offset": 0, "byte_size": seg.size}, MSGPACK)
            _parse(await self._http.post(_register_path(seg.region), content=body))
            seg.registered = True

    async def infer(
        self,
        model: str,
        inputs: dict[str, Any],
        outputs: list[str] | None = None,
        zero_copy: bool = False,
        **parameters: Any,
    ):
        return (await self.infer_result(model, inputs, outputs, zero_copy, **parameters)).outputs

    async def infer_result(
        self,
        model: str,
        inputs: dict[str, Any],
        outputs: list[str] | None = None,
        zero_copy: bool = False,
        **parameters: Any,
    ) -> InferResult:
        if self.transport == "auto":
            self._settle(await self._probe())
        arrays = _arrays(inputs) if self.transport == "shm" else None
        if arrays is None:
            body = _infer_body(inputs, outputs, parameters)
            return _infer_result(_parse(await self._http.post(_model_path(model) + "/infer", content=body)))
        assert self._pool is not None
        if model not in self._meta:
            self._meta[model] = await self.metadata(model)
        self._begin()
        p = shm.plan(self._pool, arrays, self._meta[model], outputs)
        ok = False
        try:
            await self._register(p.new)
            resp = _parse(await self._http.post(_model_path(model) + "/infer", content=_shm_body(p, parameters)))
            result, ok = _infer_result(resp, p, copy=not zero_copy), True
            return result
        finally:
            self._end(p, zero_copy and ok)

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
        if self._pool is not None:
            for seg in self._pool.close():
                if seg.registered:
                    try:
                        await self._http.post(f"/v2/systemsharedmemory/region/{seg.region}/unregister", content=b"")
                    except httpx.HTTPError:
                        pass
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
