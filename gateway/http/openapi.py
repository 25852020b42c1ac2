"""The OpenAPI 3 description of the gateway's HTTP API.

Paths are written here by hand; request/response schemas come from the pydantic models
the handlers validate with. ``tests/gateway/test_gateway_stack.py``
(``test_openapi_describes_exactly_the_routes``) keeps it true: every route of the app
is described, nothing else is, and real answers match the schemas.
"""

from __future__ import annotations

from functools import cache

from gateway.events.schema import EventsAnswer, EventsBody
from gateway.feed import FeedAnswer, FeedBody

_REF = "#/components/schemas/{model}"
_ERROR = {"$ref": "#/components/schemas/Error"}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict:
    text = {
        400: "bad input (the message names the field)",
        401: "missing or unknown API key",
        403: "the key may not use this route",
        404: "unknown effect or model",
        408: "the body did not arrive within body_timeout_ms (the connection closes)",
        413: "body or image too large",
        415: "unsupported content type",
        429: "shed by admission control or a rate limit (Retry-After)",
        503: "no ready endpoint, or the event store is unavailable (Retry-After)",
        504: "deadline expired",
    }
    return {str(c): _json(_ERROR, text[c]) for c in codes}


_COMMON = (400, 401, 403, 429, 503, 504)
_TIMEOUT = {
    "name": "x-request-timeout-ms",
    "in": "header",
    "required": False,
    "schema": {"type": "number", "exclusiveMinimum": 0},
    "description": "deadline in milliseconds (the route's default applies when shorter)",
}
_MODEL = {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}
_VERSION = {"name": "version", "in": "path", "required": True, "schema": {"type": "string"}}
_KSERVE = {"description": "the pod's KServe v2 answer, passed through unchanged"}


def _kserve_paths() -> dict:
    paths = {}
    for prefix, params in (
        ("/v2/models/{model}", [_MODEL]),
        ("/v2/models/{model}/versions/{version}", [_MODEL, _VERSION]),
    ):
        infer = {
            "summary": "KServe v2 inference, passed through to the model's pool",
            "parameters": [*params, _TIMEOUT],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"type": "object"}},
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                },
            },
            "responses": {"200": _KSERVE, **_errors(*_COMMON, 404, 408, 413)},
        }
        get = {"parameters": params, "responses": {"200": _KSERVE, **_errors(*_COMMON, 404)}}
        paths[f"{prefix}/infer"] = {"post": infer}
        paths[prefix] = {"get": {"summary": "model metadata (pass-through)", **get}}
        paths[f"{prefix}/ready"] = {"get": {"summary": "model readiness (pass-through)", **get}}
        paths[f"{prefix}/config"] = {"get": {"summary": "model config (pass-through)", **get}}
    return paths


def _schemas() -> dict:
    schemas = {}
    for model in (FeedBody, FeedAnswer, EventsBody, EventsAnswer):
        schema = model.model_json_schema(ref_template=_REF)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    schemas["Error"] = {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string"}},
    }
    schemas["Erased"] = {
        "type": "object",
        "required": ["user_id", "erased", "request_id"],
        "properties": {
            "user_id": {"type": "string"},
            "erased": {"type": "string", "description": "the event log's id of the erasure"},
            "request_id": {"type": "string"},
        },
    }
    schemas["EffectList"] = {
        "type": "object",
        "required": ["effects"],
        "properties": {
            "effects": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name", "sizes"],
                    "properties": {
                        "name": {"type": "string"},
                        "sizes": {"type": "array", "items": {"type": "integer"}},
                    },
                },
            }
        },
    }
    return schemas


def _simple(summary: str, schema: dict, extra: dict | None = None) -> dict:
    return {"get": {"summary": summary, "responses": {"200": _json(schema, "ok"), **(extra or {})}}}


@cache
def document() -> dict:
    obj = {"type": "object"}
    image = {"type": "string", "format": "binary"}
    paths = {
        "/v1/feed": {
            "post": {
                "summary": "A page of the feed for a user",
                "parameters": [_TIMEOUT],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": _REF.format(model="FeedBody")}}
                    },
                },
                "responses": {
                    "200": _json({"$ref": _REF.format(model="FeedAnswer")}, "the page"),
                    **_errors(*_COMMON, 408, 413, 415),
                },
            }
        },
        "/v1/events": {
            "post": {
                "summary": "Report what users did (stored in the event log before 202)",
                "parameters": [_TIMEOUT],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": _REF.format(model="EventsBody")}}
                    },
                },
                "responses": {
                    "202": _json({"$ref": _REF.format(model="EventsAnswer")}, "stored"),
                    **_errors(*_COMMON, 408, 413, 415),
                },
            }
        },
        "/v1/users/{user_id}/state": {
            "delete": {
                "summary": "Erase a user's stored state (history and seen items)",
                "parameters": [
                    {
                        "name": "user_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                    _TIMEOUT,
                ],
                "responses": {
                    "200": _json({"$ref": _REF.format(model="Erased")}, "erased"),
                    **_errors(*_COMMON),
                },
            }
        },
        "/v1/effects": _simple(
            "The effects and their sizes", {"$ref": _REF.format(model="EffectList")}
        ),
        "/v1/effects/{effect}": {
            "post": {
                "summary": "Apply an effect to a photo",
                "parameters": [
                    {
                        "name": "effect",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                    {
                        "name": "size",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer"},
                    },
                    _TIMEOUT,
                ],
                "requestBody": {
                    "required": True,
                    "content": {"image/jpeg": {"schema": image}, "image/png": {"schema": image}},
                },
                "responses": {
                    "200": {
                        "description": "the stylised image (PNG if Accept asks for it)",
                        "content": {
                            "image/jpeg": {"schema": image},
                            "image/png": {"schema": image},
                        },
                    },
                    **_errors(*_COMMON, 404, 408, 413, 415),
                },
            }
        },
        **_kserve_paths(),
        "/v2": _simple("Server metadata of the gateway", obj),
        "/v2/health/live": _simple("KServe v2 liveness", obj),
        "/v2/health/ready": _simple("KServe v2 readiness", obj, _errors(503)),
        "/healthz": _simple("Liveness", obj),
        "/readyz": _simple("Readiness: every pool has a ready endpoint", obj, _errors(503)),
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {
                    "200": {
                        "description": "exposition text",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/openapi.json": _simple("This document", obj),
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "tenfold gateway", "version": "0.1.0"},
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
            },
        },
        "security": [{"bearer": []}, {"apiKey": []}, {}],
        "paths": paths,
    }
