"""Everything the two nosd clients share, which is everything but the I/O.

Each call is a generator (a "flow") that yields the HTTP requests it needs
(``(method, path, body)``, or a ``Sleep`` between retries) and receives their
responses; ``client.Client`` drives flows with blocking I/O, ``client.AsyncClient``
with ``await``. So the two cannot drift apart.
"""

from __future__ import annotations

import atexit
import itertools
import random
import secrets
import weakref
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
import numpy as np

from nosclient import shm
from nosclient.codec import MSGPACK, content_type_of, decode_tensor, dumps, encode_tensor, loads

TRANSPORTS = ("http", "shm", "auto")
_HEADERS = {"Content-Type": MSGPACK, "Accept": MSGPACK}
_ids = itertools.count()
T = TypeVar("T")
Call = tuple[str, str, bytes | None]  # method, path, body
Flow = Generator[Call, "httpx.Response | Reply", T]


class NosdError(Exception):
    """Any failed call: ``status`` is the HTTP status, ``message`` the server's explanation."""

    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Sleep:
    """A flow step: wait this long (between retries); the driver sleeps its own way."""

    seconds: float


@dataclass
class Reply:
    """What the flows read of a response (httpx's Response has the same attributes)."""

    status_code: int
    headers: Mapping[str, str]
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")


@dataclass
class InferResult:
    outputs: dict[str, Any]
    parameters: dict[str, Any] = field(default_factory=dict)
    id: str = ""


def model_path(model: str) -> str:
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


def _parse(resp: httpx.Response | Reply) -> Any:
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
        outputs[name] = arr
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


def _close_at_exit(ref: weakref.ref) -> None:
    client = ref()
    if client is not None and client._pool is not None:
        client._pool.close()


def _check_transport(transport: str) -> None:
    if transport not in TRANSPORTS:
        raise ValueError(f"transport={transport!r} is not available; choose one of {TRANSPORTS}")


class Flows:
    """Everything but the I/O: the transport, a shared-memory pool, cached model metadata, and the flows."""

    def __init__(self, transport: str, retries: int = 0, backoff_s: float = 0.1):
        _check_transport(transport)
        self.transport = transport
        self.retries, self.backoff_s = retries, backoff_s
        self._pool = shm.Pool() if transport != "http" else None
        self._meta: dict[str, dict[str, Any]] = {}
        self._held: list[shm.Segment] = []  # regions behind the views the last zero_copy call returned
        if self._pool is not None:
            atexit.register(_close_at_exit, weakref.ref(self))

    # -- flows: yield (method, path, body), receive the response ------------------------------------------------

    def _infer_flow(
        self, model: str, inputs: dict[str, Any], outputs: list[str] | None, zero_copy: bool, parameters: dict
    ) -> Flow[InferResult]:
        if self.transport == "auto":
            self._settle((yield from self._probe_flow()))
        arrays = _arrays(inputs) if self.transport == "shm" else None
        if arrays is None:  # plain HTTP, or BYTES inputs that travel in the body anyway
            resp = yield ("POST", model_path(model) + "/infer", _infer_body(inputs, outputs, parameters))
            return _infer_result(_parse(resp))
        assert self._pool is not None
        if model not in self._meta:
            self._meta[model] = _parse((yield ("GET", model_path(model), None)))
        if self._held:  # the previous zero_copy call's views end here
            self._pool.release(self._held)
            self._held = []
        p = shm.plan(self._pool, arrays, self._meta[model], outputs)
        keep: list[shm.Segment] = []
        try:
            yield from self._register_flow(p.new)
            resp = yield ("POST", model_path(model) + "/infer", _shm_body(p, parameters))
            result = _infer_result(_parse(resp), p, copy=not zero_copy)
            keep = list(p.outputs.values()) if zero_copy else []
            return result
        finally:
            self._pool.release([s for s in p.leases if all(s is not k for k in keep)])
            self._held = keep

    def _probe_flow(self) -> Flow[bool]:
        """A nonce in a fresh region, echoed by nosd/identity over HTTP: equal bytes prove a shared /dev/shm."""
        assert self._pool is not None
        nonce = np.frombuffer(secrets.token_bytes(16), np.uint8)[None]
        p = shm.plan(self._pool, {"x": nonce}, {"outputs": [{"name": "y"}]}, None)
        try:
            yield from self._register_flow(p.new)
            resp = yield ("POST", model_path("nosd/identity") + "/infer", _shm_body(p, {}))
            return bool(np.array_equal(_infer_result(_parse(resp)).outputs.get("y"), nonce))
        except (NosdError, httpx.HTTPError, ValueError):
            return False
        finally:
            self._pool.release(p.leases)

    def _register_flow(self, segs: list[shm.Segment]) -> Flow[None]:
        for seg in segs:
            body = dumps({"key": seg.key, "offset": 0, "byte_size": seg.size}, MSGPACK)
            _parse((yield ("POST", f"/v2/systemsharedmemory/region/{seg.region}/register", body)))
            seg.registered = True

    def _close_flow(self) -> Flow[None]:
        """Unlink this client's regions and unregister them (the server would also drop them by itself)."""
        if self._pool is None:
            return
        for seg in self._pool.close():
            if seg.registered:
                try:
                    yield ("POST", f"/v2/systemsharedmemory/region/{seg.region}/unregister", b"")
                except httpx.HTTPError:
                    pass

    def _load_flow(self, model: str, parameters: dict[str, Any]) -> Flow[dict[str, Any]]:
        body = dumps({"parameters": parameters}, MSGPACK)
        return _parse((yield ("POST", "/v2/repository/models/" + quote(model, safe="/") + "/load", body)))

    def _call_flow(self, method: str, path: str, body: bytes | None = None) -> Flow[Any]:
        """One request, its parsed answer (or NosdError)."""
        return _parse((yield (method, path, body)))

    def _ready_flow(self, model: str | None) -> Flow[bool]:
        resp = yield (("GET", model_path(model) + "/ready", None) if model else ("GET", "/v2/health/ready", None))
        return resp.status_code == 200

    def _settle(self, shm_works: bool) -> None:
        """After the auto probe: keep shared memory, or drop the pool (and the probe's region) for plain HTTP."""
        self.transport = "shm" if shm_works else "http"
        if not shm_works and self._pool is not None:
            self._pool.close()
            self._pool = None

    def _retrying(self, flow: Flow[T]) -> Generator[Call | Sleep, Any, T]:
        """The flow, with each call repeated after a ``Sleep`` while ``_retry_delay`` says so."""
        try:
            call = next(flow)
            while True:
                for attempt in itertools.count():
                    try:
                        resp = yield call
                    except httpx.HTTPError as e:
                        if (delay := self._retry_delay(attempt, e)) is None:
                            call = flow.throw(e)
                            break
                    else:
                        if (delay := self._retry_delay(attempt, resp)) is None:
                            call = flow.send(resp)
                            break
                    yield Sleep(delay)
        except StopIteration as done:  # the flow finished: so does this wrapper, with its value
            return done.value

    def _retry_delay(self, attempt: int, outcome: httpx.Response | Reply | Exception) -> float | None:
        """Seconds to wait before retrying a call, or None to give up. Retried: 503 (queue full, worker
        restarting, draining: the server says when, in Retry-After) and connection failures; never 4xx/5xx
        that say the request itself is wrong. Exponential backoff with jitter, capped at 5 s."""
        if attempt >= self.retries:
            return None
        if isinstance(outcome, (httpx.Response, Reply)):
            if outcome.status_code != 503:
                return None
            hinted = outcome.headers.get("Retry-After", "")
            if hinted.isdigit():
                return min(5.0, float(hinted))
        elif not isinstance(outcome, (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError)):
            return None
        return min(5.0, self.backoff_s * 2**attempt * (0.5 + random.random()))


def headers_for(token: str | None) -> dict[str, str]:
    return {**_HEADERS, "Authorization": f"Bearer {token}"} if token else dict(_HEADERS)
