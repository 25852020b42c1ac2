"""The control plane's admin API on loopback: read the pools, replace a pool's
endpoints (for people and scripts; the autoscaler calls ``EndpointStore`` in-process),
and the Prometheus metrics."""

from __future__ import annotations

from collections.abc import Callable

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError

from mesh.config import EndpointSet
from mesh.metrics import MeshMetrics
from mesh.snapshot import SnapshotError
from mesh.store import EndpointStore, UnknownPool
from servicekit.validation import validation_message
from servicekit.web import json_response

STORE = web.AppKey("store", EndpointStore)
NODES = web.AppKey("nodes", Callable)
METRICS = web.AppKey("metrics", MeshMetrics)


def _pool_doc(store: EndpointStore, pool: str) -> dict:
    return {
        "models": list(store.config.pools[pool].models),
        "endpoints": [e.model_dump() for e in store.endpoints()[pool]],
    }


async def list_pools(request: web.Request) -> web.Response:
    store = request.app[STORE]
    pools = {name: _pool_doc(store, name) for name in store.config.pools}
    return json_response({"version": store.version, "pools": pools})


async def get_pool(request: web.Request) -> web.Response:
    store = request.app[STORE]
    pool = request.match_info["pool"]
    if pool not in store.config.pools:
        return json_response({"error": str(UnknownPool(pool))}, 404)
    return json_response({"version": store.version, **_pool_doc(store, pool)})


async def put_endpoints(request: web.Request) -> web.Response:
    store = request.app[STORE]
    pool = request.match_info["pool"]
    if pool not in store.config.pools:
        return json_response({"error": str(UnknownPool(pool))}, 404)
    try:
        body = EndpointSet.model_validate(orjson.loads(await request.read()))
    except orjson.JSONDecodeError as exc:
        return json_response({"error": f"body is not JSON: {exc}"}, 400)
    except ValidationError as exc:
        return json_response({"error": validation_message(exc, root="body")}, 400)
    try:
        store.set_endpoints(pool, body.endpoints)
    except SnapshotError as exc:
        request.app[METRICS].rejected.inc()
        return json_response({"error": f"snapshot refused: {exc}"}, 422)
    request.app[METRICS].endpoints.labels(pool).set(len(body.endpoints))
    return json_response({"version": store.version, **_pool_doc(store, pool)})


async def nodes(request: web.Request) -> web.Response:
    """What each connected node accepted: a script can wait for a change to be applied
    (e.g. a pod's removal) before it acts on it (drains the pod)."""
    return json_response({"version": request.app[STORE].version, "nodes": request.app[NODES]()})


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


def create_admin_app(
    store: EndpointStore, mesh_metrics: MeshMetrics, node_states: Callable[[], dict]
) -> web.Application:
    app = web.Application(client_max_size=4 << 20)
    app[STORE] = store
    app[NODES] = node_states
    app[METRICS] = mesh_metrics
    app.router.add_get("/v1/pools", list_pools)
    app.router.add_get("/v1/pools/{pool}", get_pool)
    app.router.add_put("/v1/pools/{pool}/endpoints", put_endpoints)
    app.router.add_get("/v1/nodes", nodes)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    return app


def create_metrics_app(mesh_metrics: MeshMetrics) -> web.Application:
    """Only ``/metrics`` and ``/healthz``: what Prometheus and a kubelet probe may reach
    when the admin API stays on loopback (``--metrics-port``)."""
    app = web.Application(client_max_size=1024)
    app[METRICS] = mesh_metrics
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    return app
