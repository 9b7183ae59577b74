"""aiohttp routes of the KServe v2 REST protocol: parse, call the manager, encode. No model logic here."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from nosclient.codec import BINARY_HEADER, JSON, MSGPACK, content_type_of, dumps, loads
from nosd import __version__, hub, status
from nosd.errors import BadRequest, NosdError, NotReady, PayloadTooLarge, Unauthorized, headers_of, status_of
from nosd.logs import REQUEST_ID
from nosd.manager import ModelManager, batch_len
from nosd.metrics import Metrics
from nosd.protocol import decode_body, encode_response, parse_infer
from nosd.shm import Registry

log = logging.getLogger("nosd.server")
MANAGER = web.AppKey("manager", ModelManager)
READY = web.AppKey("ready", dict)
SHM = web.AppKey("shm", Registry)
METRICS = web.AppKey("metrics", Metrics)
EXTENSIONS = ["model_repository", "binary_tensor_data", "msgpack"]
PUBLIC = {"/v2/health/live", "/v2/health/ready", "/"}  # no token needed (the page at / holds no data)


@dataclass(frozen=True)
class Settings:
    """The request limits and access rules a daemon is started with."""

    max_body_bytes: int = 256 * 2**20
    max_elements: int = 2**28
    default_timeout_s: float | None = None
    auth_token: str | None = None


SETTINGS = web.AppKey("settings", Settings)


def _reply_type(request: web.Request) -> str:
    accept = request.headers.get("Accept", "")
    if "msgpack" in accept:
        return MSGPACK
    if "json" in accept:
        return JSON
    return content_type_of(request.headers.get("Content-Type"))


def reply(request: web.Request, obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    ctype = _reply_type(request)
    return web.Response(body=dumps(obj, ctype), status=status, content_type=ctype, headers=headers)


@web.middleware
async def observe(request: web.Request, handler: Any) -> web.StreamResponse:
    """Outermost: the request id (X-Request-ID in, or a new one; echoed back and in every log line), and for
    inference, the request's metrics. A client that disconnects cancels its handler: counted as status 499."""
    rid = request.headers.get("X-Request-ID", "")[:64] or uuid.uuid4().hex[:16]
    token = REQUEST_ID.set(rid)
    started = time.perf_counter()
    model = request.match_info.get("name") if request.match_info.route.name == "infer" else None
    status = 499
    try:
        response = await handler(request)
        status = response.status
        response.headers["X-Request-ID"] = rid
        return response
    finally:
        if model is not None:
            model = model if hub.known(model) else "_unknown"  # clients must not mint label values
            request.app[METRICS].done(
                model, status, time.perf_counter() - started, request.get("params"), request.get("samples", 0)
            )
        REQUEST_ID.reset(token)


@web.middleware
async def auth(request: web.Request, handler: Any) -> web.StreamResponse:
    """With ``--auth-token``, every route but health (and the data-free page shell) needs ``Bearer TOKEN``."""
    token = request.app[SETTINGS].auth_token
    if token and request.path not in PUBLIC:
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            what = "a wrong token" if given else "no Authorization header"
            raise Unauthorized(f"this server needs 'Authorization: Bearer <token>' (--auth-token); got {what}")
    return await handler(request)


@web.middleware
async def errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """The one place an exception becomes a status: ``errors.status_of`` decides."""
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[SETTINGS].max_body_bytes
        err: Exception = PayloadTooLarge(
            f"request body is over the limit of {limit} bytes; send less per request or raise --max-body-mb"
        )
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return reply(request, {"error": f"{e.reason}: {request.method} {request.path}"}, e.status)
    except (NosdError, ValueError) as e:
        err = e
    except Exception as e:  # a bug: log it whole, tell the client what happened
        log.exception("unhandled error on %s %s", request.method, request.path)
        err = e
    status = status_of(err)
    log.log(
        logging.WARNING if status >= 500 else logging.INFO, "%s %s -> %d: %s", request.method, request.path, status, err
    )
    return reply(request, {"error": str(err)}, status, headers_of(err))


async def _body(request: web.Request) -> Any:
    raw = await request.read()
    if not raw:
        return {}
    return loads(raw, content_type_of(request.headers.get("Content-Type")))


def _manager(request: web.Request) -> ModelManager:
    if not request.app[READY]["ready"]:
        raise NotReady("server is starting or shutting down; retry shortly")
    return request.app[MANAGER]


async def live(request: web.Request) -> web.Response:
    return reply(request, {"live": True})


async def ready(request: web.Request) -> web.Response:
    ok = request.app[READY]["ready"]
    return reply(request, {"ready": ok}, 200 if ok else 503)


async def server_metadata(request: web.Request) -> web.Response:
    extensions = EXTENSIONS + (["system_shared_memory"] if SHM in request.app else [])
    return reply(request, {"name": "nosd", "version": __version__, "extensions": extensions})


async def models(request: web.Request) -> web.Response:
    return reply(request, {"models": request.app[MANAGER].listing()})


async def model_metadata(request: web.Request) -> web.Response:
    return reply(request, request.app[MANAGER].describe(request.match_info["name"]))


async def model_ready(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    hub.get(name)
    ok = request.app[READY]["ready"] and request.app[MANAGER].state(name) == "ready"
    return reply(request, {"name": name, "ready": ok}, 200 if ok else 400)


async def infer(request: web.Request) -> web.Response:
    manager = _manager(request)
    spec = hub.get(request.match_info["name"])
    settings = request.app[SETTINGS]
    raw = await request.read()
    body = decode_body(raw, content_type_of(request.headers.get("Content-Type")), request.headers.get(BINARY_HEADER))
    req = parse_infer(body, spec, request.app.get(SHM), settings.max_elements, settings.default_timeout_s)
    outputs, params = await manager.infer(spec.id, req.work, req.timeout_s)
    request["params"], request["samples"] = params, batch_len(req.work.inputs)
    data, ctype, headers = encode_response(spec, req, outputs, params, _reply_type(request))
    return web.Response(body=data, content_type=ctype, headers=headers)


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def status_json(request: web.Request) -> web.Response:
    shm = request.app.get(SHM)
    snap = status.snapshot(request.app[MANAGER], request.app[METRICS], len(shm.regions) if shm else 0)
    return web.json_response(snap)


async def status_page(request: web.Request) -> web.Response:
    return web.Response(text=status.PAGE, content_type="text/html")


def _registry(request: web.Request) -> Registry:
    if SHM not in request.app:
        raise BadRequest("the system shared-memory extension is disabled on this server (--no-shm)")
    return request.app[SHM]


async def shm_status(request: web.Request) -> web.Response:
    return reply(request, _registry(request).status(request.match_info.get("region")))


async def shm_register(request: web.Request) -> web.Response:
    region = _registry(request).register(request.match_info["region"], await _body(request))
    log.info("registered shared-memory region %s -> %s", region.name, region.key)
    return reply(request, {})


async def shm_unregister(request: web.Request) -> web.Response:
    for region in _registry(request).unregister(request.match_info.get("region")):
        await request.app[MANAGER].forget_segment(region.key)
    return reply(request, {})


async def load(request: web.Request) -> web.Response:
    """Body (optional): {"parameters": {"replicas", "min_replicas", "max_replicas", "max_batch_size"}}."""
    manager = _manager(request)
    name = request.match_info["name"]
    hub.get(name)
    body = await _body(request)
    params = (body.get("parameters") or {}) if isinstance(body, dict) else {}
    if not isinstance(params, dict):
        raise BadRequest("'parameters' must be a map")
    known = {"replicas", "min_replicas", "max_replicas", "max_batch_size"}
    await manager.ensure(name, **{k: v for k, v in params.items() if k in known})
    return reply(request, manager.describe(name))


async def memory(request: web.Request) -> web.Response:
    return reply(request, request.app[MANAGER].memory())


async def unload(request: web.Request) -> web.Response:
    manager = _manager(request)
    name = request.match_info["name"]
    hub.get(name)
    await manager.unload(name)
    return reply(request, {"name": name, "state": "unloaded"})


async def repository_index(request: web.Request) -> web.Response:
    return reply(request, request.app[MANAGER].listing())


def make_app(manager: ModelManager, settings: Settings | None = None, shm: bool = True) -> web.Application:
    settings = settings or Settings()
    app = web.Application(middlewares=[observe, errors, auth], client_max_size=settings.max_body_bytes)
    app[MANAGER] = manager
    if shm:
        app[SHM] = Registry()
    app[READY] = {"ready": False}
    app[SETTINGS] = settings
    app[METRICS] = Metrics()
    app[METRICS].watch(manager, app.get(SHM))
    name = "{name:.+}"
    app.router.add_get("/", status_page)
    app.router.add_get("/nosd/status", status_json)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v2/health/live", live)
    app.router.add_get("/v2/health/ready", ready)
    app.router.add_get("/v2", server_metadata)
    app.router.add_get("/v2/models", models)
    app.router.add_get(f"/v2/models/{name}/ready", model_ready)
    app.router.add_post(f"/v2/models/{name}/infer", infer, name="infer")
    app.router.add_get(f"/v2/models/{name}", model_metadata)
    app.router.add_post("/v2/repository/index", repository_index)
    app.router.add_get("/nosd/memory", memory)
    app.router.add_post(f"/v2/repository/models/{name}/load", load)
    app.router.add_post(f"/v2/repository/models/{name}/unload", unload)
    region = "/v2/systemsharedmemory/region/{region}"
    app.router.add_get("/v2/systemsharedmemory/status", shm_status)
    app.router.add_get(region + "/status", shm_status)
    app.router.add_post(region + "/register", shm_register)
    app.router.add_post(region + "/unregister", shm_unregister)
    app.router.add_post("/v2/systemsharedmemory/unregister", shm_unregister)
    return app


async def sweep_regions(app: web.Application, every_s: float = 1.0) -> None:
    """Drop registrations whose segment is gone (a killed client's reaper unlinked it) and unmap them."""
    while True:
        await asyncio.sleep(every_s)
        for region in app[SHM].vanished():
            log.info("shared-memory region %s: segment %s vanished; unregistered", region.name, region.key)
            await app[MANAGER].forget_segment(region.key)
