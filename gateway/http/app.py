"""The gateway's HTTP adapter (aiohttp + orjson): translation only, over GatewayCore."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from pydantic import BaseModel, ValidationError

from gateway.auth import key_from_headers
from gateway.core import GatewayCore
from gateway.events.schema import EventsBody
from gateway.feed import FeedBody
from gateway.http.openapi import document
from gateway.upstream.passthrough import HttpRequest
from inference.protocol.errors import (
    InvalidInput,
    PayloadTooLarge,
    RequestTimeout,
    UnsupportedMediaType,
)
from inference.protocol.jsondoc import json_object
from servicekit.validation import validation_message
from servicekit.web import close_while, errors_middleware, json_response

log = logging.getLogger("tenfold.gateway.http")
CORE = web.AppKey("core", GatewayCore)
TIMEOUT_HEADER = "x-request-timeout-ms"
IMAGE_TYPES = ("image/jpeg", "image/png")
#: request headers the KServe pass-through forwards to the pod
_FORWARDED = ("content-type", "content-encoding", "inference-header-content-length")


def _core(request: web.Request) -> GatewayCore:
    return request.app[CORE]


def _timeout_s(request: web.Request) -> float | None:
    raw = request.headers.get(TIMEOUT_HEADER)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise InvalidInput(f"{TIMEOUT_HEADER}: {raw!r} is not a number") from None
    if not value > 0:
        raise InvalidInput(f"{TIMEOUT_HEADER}: must be positive")
    return value / 1000


async def _body(request: web.Request, compressed: bool = False) -> bytes:
    """The whole body within ``body_timeout_ms`` (aiohttp keeps it: a second call
    returns it at once), as sent: the server does not inflate (``auto_decompress=False``),
    so a small gzip bomb costs nothing. A compressed body is refused unless
    ``compressed`` (the KServe pass-through forwards it, encoding and all, to the pod)."""
    settings = request.app[CORE].settings
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if not compressed and encoding not in ("", "identity"):
        raise UnsupportedMediaType(f"content-encoding: {encoding!r}; send the body uncompressed")
    try:
        async with asyncio.timeout(settings.body_timeout_ms / 1000):
            return await request.read()
    except TimeoutError:
        raise RequestTimeout(f"body: not received within {settings.body_timeout_ms:g} ms") from None
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(f"body: larger than {settings.max_body_bytes} bytes") from None


def _validate(model: type[BaseModel], raw: bytes) -> BaseModel:
    doc = json_object(raw)
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        raise InvalidInput(validation_message(exc, root="body")) from None


def _admit(request: web.Request, route: str, effect: str | None = None, before_slot=None):
    return _core(request).admit(
        route,
        key_from_headers(request.headers),
        _timeout_s(request),
        request.headers.get("x-request-id"),
        effect,
        before_slot,
    )


def _json_body(request: web.Request):
    """What runs before the slot for a JSON route: the content type, then the body."""

    async def read() -> bytes:
        _json_type(request)
        return await _body(request)

    return read


def _json_type(request: web.Request) -> None:
    if request.content_type not in ("application/json", "application/octet-stream"):
        raise UnsupportedMediaType(f"content-type: {request.content_type!r}; send application/json")


async def feed(request: web.Request) -> web.Response:
    async with _admit(request, "feed", before_slot=_json_body(request)) as call:
        body = _validate(FeedBody, await _body(request))
        answer = await _core(request).feed(body, call)
        response = web.Response(
            body=answer.__pydantic_serializer__.to_json(answer),
            content_type="application/json",
            headers={"x-request-id": call.request_id},
        )
        if answer.experiment:
            response.headers["x-experiment"] = answer.experiment
        return response


async def events(request: web.Request) -> web.Response:
    async with _admit(request, "events", before_slot=_json_body(request)) as call:
        body = _validate(EventsBody, await _body(request))
        answer = await _core(request).publish_events(body, call)
        return web.Response(
            body=answer.__pydantic_serializer__.to_json(answer),
            status=202,
            content_type="application/json",
            headers={"x-request-id": call.request_id},
        )


async def erase_user(request: web.Request) -> web.Response:
    async with _admit(request, "events") as call:
        user = request.match_info["user_id"]
        erased = await _core(request).erase_user(user, call)
        doc = {"user_id": user, "erased": erased, "request_id": call.request_id}
        return json_response(doc)


def _keyed(request: web.Request) -> None:
    """With API keys configured, a read-only surface needs a valid key too."""
    _core(request).auth.identify(key_from_headers(request.headers))


async def list_effects(request: web.Request) -> web.Response:
    _keyed(request)
    return json_response({"effects": _core(request).effects.listing()})


def _size(request: web.Request) -> int | None:
    raw = request.query.get("size")
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise InvalidInput(f"size: {raw!r} is not an integer") from None


def _format(request: web.Request) -> str:
    accept = request.headers.get("Accept", "")
    if "image/png" in accept and "image/jpeg" not in accept:
        return "png"
    return "jpeg"


async def apply_effect(request: web.Request) -> web.Response:
    name = request.match_info["effect"]
    core = _core(request)

    async def read() -> bytes:
        core.effects.effect(name)  # unknown effect: 404 before reading the body
        if request.content_type not in IMAGE_TYPES:
            raise UnsupportedMediaType(
                f"content-type: {request.content_type!r}; send image/jpeg or image/png"
            )
        return await _body(request)

    async with _admit(request, "effects", effect=name, before_slot=read) as call:
        data = await _body(request)
        rendered = await core.apply_effect(name, data, _size(request), _format(request), call)
        return web.Response(
            body=rendered.data,
            content_type=rendered.content_type,
            headers={"x-request-id": call.request_id},
        )


def _pass_through(route_has_body: bool):
    async def handler(request: web.Request) -> web.Response:
        model = request.match_info["model"]
        before = (lambda: _body(request, compressed=True)) if route_has_body else None
        async with _admit(request, "infer", before_slot=before) as call:
            body = await _body(request, compressed=True) if route_has_body else b""
            headers = {k: v for k, v in request.headers.items() if k.lower() in _FORWARDED}
            upstream = HttpRequest(request.method, request.path_qs, body, headers)
            status, kept, data = await _core(request).http_passthrough(model, upstream, call)
            return web.Response(body=data, status=status, headers=kept)

    return handler


async def healthz(request: web.Request) -> web.Response:
    return json_response({"live": True})


async def readyz(request: web.Request) -> web.Response:
    core = _core(request)
    ok = core.is_ready()
    return json_response({"ready": ok, "pools": core.ready()}, 200 if ok else 503)


async def v2_live(request: web.Request) -> web.Response:
    return json_response({"live": True})


async def v2_ready(request: web.Request) -> web.Response:
    ok = _core(request).is_ready()
    return json_response({"ready": ok}, 200 if ok else 503)


async def v2_metadata(request: web.Request) -> web.Response:
    return json_response({"name": "tenfold-gateway", "version": "0.1.0", "extensions": []})


async def metrics(request: web.Request) -> web.Response:
    _keyed(request)
    return _exposition(_core(request))


def _exposition(core: GatewayCore) -> web.Response:
    body = core.metrics.render()
    return web.Response(body=body, content_type="text/plain", charset="utf-8")


def create_metrics_app(core: GatewayCore) -> web.Application:
    """The metrics port's app: ``GET /metrics`` only, no key (``metrics_port``)."""
    app = web.Application()

    async def open_metrics(request: web.Request) -> web.Response:
        return _exposition(core)

    app.router.add_get("/metrics", open_metrics)
    return app


async def openapi(request: web.Request) -> web.Response:
    _keyed(request)
    return json_response(document())


def create_app(core: GatewayCore) -> web.Application:
    app = web.Application(
        middlewares=[errors_middleware(log)], client_max_size=core.settings.max_body_bytes
    )
    app[CORE] = core
    app.on_response_prepare.append(close_while(lambda: core.draining))
    r = app.router
    r.add_post("/v1/feed", feed)
    r.add_post("/v1/events", events)
    r.add_delete("/v1/users/{user_id}/state", erase_user)
    r.add_get("/v1/effects", list_effects)
    r.add_post("/v1/effects/{effect}", apply_effect)
    for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        r.add_post(prefix + "/infer", _pass_through(True))
        r.add_get(prefix, _pass_through(False))
        r.add_get(prefix + "/ready", _pass_through(False))
        r.add_get(prefix + "/config", _pass_through(False))
    r.add_get("/v2", v2_metadata)
    r.add_get("/v2/health/live", v2_live)
    r.add_get("/v2/health/ready", v2_ready)
    r.add_get("/healthz", healthz)
    r.add_get("/readyz", readyz)
    r.add_get("/metrics", metrics)
    r.add_get("/openapi.json", openapi)
    return app
