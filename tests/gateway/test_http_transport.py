"""The pipelines' HTTP transport (``PoolClient`` with ``transport: http``): a real pod
answers it as it answers gRPC; what an HTTP answer means to the pool (retry elsewhere,
the endpoint's fault or not) is what the same gRPC status means."""

from __future__ import annotations

import time
from contextlib import asynccontextmanager

import numpy as np
import pytest
from aiohttp import web

from gateway.metrics import GatewayMetrics
from gateway.settings import EndpointSettings, GatewaySettings
from gateway.upstream.upstreams import Upstreams, build_upstreams
from inference.protocol.errors import InvalidInput, ModelNotFound, Overloaded
from servicekit.launcher import free_port
from servicekit.web import error_response

pytestmark = pytest.mark.integration


@asynccontextmanager
async def upstreams(endpoints: list[EndpointSettings], retry_floor: float = 5.0):
    """The gateway's upstream side as its settings build it: pool "default" (the
    default transport, HTTP) and pool "grpc" (``transport: grpc``) over the same endpoints."""
    listed = [e.model_dump() for e in endpoints]
    settings = GatewaySettings(
        pools={
            "default": {"endpoints": listed},
            "grpc": {"endpoints": listed, "transport": "grpc"},
        },
        retry_budget_min_per_s=retry_floor,
    )
    built: Upstreams = build_upstreams(settings, GatewayMetrics())
    await built.start()
    try:
        yield built
    finally:
        await built.close()


async def test_http_and_grpc_answers_are_the_same_arrays_and_errors(pod):
    async with upstreams([EndpointSettings(grpc=pod.grpc, http=pod.http)]) as built:
        over_http, over_grpc = built.client("default"), built.client("grpc")
        x = np.array([[1.5, -2.0], [0.25, 4.0]], np.float32)
        deadline = time.monotonic() + 10
        by_http, version = await over_http.infer("scale", {"x": x}, deadline, request_id="r1")
        by_grpc, grpc_version = await over_grpc.infer("scale", {"x": x}, deadline)
        assert by_http.keys() == by_grpc.keys() and version == grpc_version
        for name in by_http:
            assert by_http[name].dtype == by_grpc[name].dtype
            assert np.array_equal(by_http[name], by_grpc[name])
        for client in (over_http, over_grpc):
            with pytest.raises(ModelNotFound):
                await client.infer("nope", {"x": x}, deadline)
            with pytest.raises(InvalidInput, match="x"):
                await client.infer("scale", {"x": x.astype(np.int32)}, deadline)
        # the answer's load report reached the pool, as over gRPC
        (endpoint,) = built.pools.get("default").endpoints
        assert endpoint.state.report is not None


@pytest.mark.parametrize("http_address", [None, "closed"])
async def test_an_endpoint_without_a_working_http_address_is_called_over_grpc(pod, http_address):
    # "closed": a pod restarted on its gRPC address (which identifies and health checks
    # it) with another HTTP port than the config says
    address = f"127.0.0.1:{free_port()}" if http_address == "closed" else None
    async with upstreams([EndpointSettings(grpc=pod.grpc, http=address)]) as built:
        x = np.ones((1, 2), np.float32)
        outputs, _ = await built.client("default").infer("scale", {"x": x}, time.monotonic() + 10)
        assert outputs


async def test_an_overloaded_http_endpoint_is_retried_on_another_and_not_ejected(pod):
    calls = []

    async def shed(request: web.Request) -> web.Response:
        calls.append(request.path)
        return error_response(Overloaded("queue full"))  # 503, RESOURCE_EXHAUSTED

    app = web.Application()
    app.router.add_post("/v2/models/{model}/infer", shed)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    busy = EndpointSettings(grpc="127.0.0.1:9", http=f"127.0.0.1:{port}")
    x = np.ones((1, 2), np.float32)
    try:
        async with upstreams([busy], retry_floor=100) as built:
            over_http = built.client("default")
            with pytest.raises(Overloaded, match="queue full"):
                await over_http.infer("scale", {"x": x}, time.monotonic() + 5)
            assert calls == ["/v2/models/scale/infer"]
            built.update("default", [busy, EndpointSettings(grpc=pod.grpc, http=pod.http)])
            for _ in range(6):  # wherever the balancer sends it first, the pod answers
                outputs, _ = await over_http.infer("scale", {"x": x}, time.monotonic() + 5)
                assert outputs
            shedding = next(e for e in built.pools.get("default").endpoints if e.settings == busy)
            assert not shedding.state.ejected(time.monotonic())  # busy is not broken
    finally:
        await runner.cleanup()
