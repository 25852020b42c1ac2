"""The pipelines' HTTP transport (``PoolClient`` with ``transport: http``): a real pod
answers it as it answers gRPC; what an HTTP answer means to the pool (retry elsewhere,
the endpoint's fault or not) is what the same gRPC status means."""

from __future__ import annotations

import random
import time

import numpy as np
import pytest
from aiohttp import web

from gateway.metrics import GatewayMetrics
from gateway.settings import EndpointSettings
from gateway.upstream.balancer import EjectionPolicy
from gateway.upstream.kserve import PoolClient
from gateway.upstream.passthrough import HttpPassthrough
from gateway.upstream.pools import Pool, PoolDeps, PoolRegistry
from inference.protocol.errors import InvalidInput, ModelNotFound, Overloaded
from servicekit.launcher import free_port
from servicekit.web import error_response

pytestmark = pytest.mark.integration


def registry(endpoints: list[EndpointSettings], retry_floor: float = 0.0) -> PoolRegistry:
    deps = PoolDeps(
        metrics=GatewayMetrics(),
        clock=time.monotonic,
        rng=random.Random(0),
        policy=EjectionPolicy(3, 5.0, 30.0),
        budget_ratio=0.2,
        budget_min_per_s=retry_floor,
        hedge_after_s=None,
    )
    return PoolRegistry({"p": Pool("p", endpoints, deps)})


async def clients(endpoints: list[EndpointSettings], retry_floor: float = 0.0):
    http = HttpPassthrough()
    await http.start()
    pools = registry(endpoints, retry_floor)
    return http, pools, PoolClient(pools, "p", http, "http"), PoolClient(pools, "p")


async def test_http_and_grpc_answers_are_the_same_arrays_and_errors(pod):
    http, pools, over_http, over_grpc = await clients(
        [EndpointSettings(grpc=pod.grpc, http=pod.http)]
    )
    try:
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
        (endpoint,) = pools.get("p").endpoints
        assert endpoint.state.report is not None
    finally:
        await pools.close()
        await http.close()


@pytest.mark.parametrize("http_address", [None, "closed"])
async def test_an_endpoint_without_a_working_http_address_is_called_over_grpc(pod, http_address):
    # "closed": a pod restarted on its gRPC address (which identifies and health checks
    # it) with another HTTP port than the config says
    address = f"127.0.0.1:{free_port()}" if http_address == "closed" else None
    http, pools, over_http, _ = await clients([EndpointSettings(grpc=pod.grpc, http=address)])
    try:
        x = np.ones((1, 2), np.float32)
        outputs, _ = await over_http.infer("scale", {"x": x}, time.monotonic() + 10)
        assert outputs
    finally:
        await pools.close()
        await http.close()


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
    http, pools, over_http, _ = await clients([busy], retry_floor=100)
    try:
        with pytest.raises(Overloaded, match="queue full"):
            await over_http.infer("scale", {"x": np.ones((1, 2), np.float32)}, time.monotonic() + 5)
        assert calls == ["/v2/models/scale/infer"]
        pools.update("p", [busy, EndpointSettings(grpc=pod.grpc, http=pod.http)])
        for _ in range(6):  # wherever the balancer sends it first, the pod answers
            outputs, _ = await over_http.infer(
                "scale", {"x": np.ones((1, 2), np.float32)}, time.monotonic() + 5
            )
            assert outputs
        shedding = next(e for e in pools.get("p").endpoints if e.settings == busy)
        assert not shedding.state.ejected(time.monotonic())  # busy is not broken
    finally:
        await pools.close()
        await http.close()
        await runner.cleanup()
