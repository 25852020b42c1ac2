"""The KServe v2 HTTP routes of an inference pod, over the DataPlane."""

from __future__ import annotations

import logging

from aiohttp import web
from google.protobuf import json_format

from inference.dataplane import DataPlane
from inference.protocol.errors import InvalidInput, TenfoldError
from inference.protocol.kserve_http import (
    HEADER_LENGTH,
    TIMEOUT_MS,
    decode_request,
    encode_response,
)
from servicekit.web import close_while, error_response, errors_middleware, json_response

log = logging.getLogger("tenfold.inference.http")

DATAPLANE = web.AppKey("dataplane", DataPlane)


def _dp(request: web.Request) -> DataPlane:
    return request.app[DATAPLANE]


def _model(request: web.Request) -> tuple[str, str]:
    return request.match_info["model"], request.match_info.get("version", "")


async def server_metadata(request: web.Request) -> web.Response:
    return json_response(_dp(request).server_metadata())


async def live(request: web.Request) -> web.Response:
    return (
        json_response({"live": True})
        if _dp(request).live()
        else json_response({"live": False}, 503)
    )


async def ready(request: web.Request) -> web.Response:
    return (
        json_response({"ready": True})
        if _dp(request).ready()
        else json_response({"ready": False}, 503)
    )


async def model_metadata(request: web.Request) -> web.Response:
    return json_response(_dp(request).model_metadata(*_model(request)))


async def model_ready(request: web.Request) -> web.Response:
    ok = _dp(request).model_ready(*_model(request))
    return json_response({"ready": ok}, 200 if ok else 503)


async def model_config(request: web.Request) -> web.Response:
    config = _dp(request).model_config(*_model(request))
    return json_response(json_format.MessageToDict(config, preserving_proto_field_name=True))


async def repository_index(request: web.Request) -> web.Response:
    return json_response(_dp(request).repository_index())


def _header_length(request: web.Request) -> int | None:
    value = request.headers.get(HEADER_LENGTH)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise InvalidInput(f"{HEADER_LENGTH} must be an integer, got '{value}'") from None


def _timeout_s(request: web.Request) -> float | None:
    value = request.headers.get(TIMEOUT_MS)
    if value is None:
        return None
    try:
        ms = float(value)
    except ValueError:
        ms = -1.0
    if not ms >= 0:  # also refuses nan
        raise InvalidInput(f"{TIMEOUT_MS} must be a non-negative number, got '{value}'")
    return ms / 1000


async def infer(request: web.Request) -> web.Response:
    """An inference; the answer, refusals included, carries the model's load report
    (``inference.protocol.loadreport``) as headers, as gRPC answers carry it in their
    trailing metadata."""
    served = None
    try:
        served = _dp(request).servable(*_model(request))
        body = await request.read()
        infer_request = decode_request(*_model(request), body, _header_length(request))
        response = await _dp(request).infer(infer_request, _timeout_s(request))
        payload, headers = encode_response(infer_request, response)
        answer = web.Response(body=payload, headers=headers)
    except TenfoldError as exc:
        answer = error_response(exc)
    report = None if served is None else served.batcher.load_report()
    if report is not None:
        answer.headers.update(report.metadata())
    return answer


def create_app(dataplane: DataPlane, *, max_request_bytes: int) -> web.Application:
    app = web.Application(client_max_size=max_request_bytes, middlewares=[errors_middleware(log)])
    app[DATAPLANE] = dataplane
    app.on_response_prepare.append(close_while(lambda: dataplane.draining))
    app.router.add_get("/v2", server_metadata)
    app.router.add_get("/v2/health/live", live)
    app.router.add_get("/v2/health/ready", ready)
    app.router.add_post("/v2/repository/index", repository_index)
    for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        app.router.add_get(prefix, model_metadata)
        app.router.add_get(prefix + "/ready", model_ready)
        app.router.add_get(prefix + "/config", model_config)
        app.router.add_post(prefix + "/infer", infer)
    return app
