"""Pool.call with scripted attempts: retries go to another endpoint within the budget,
hedges race, deadlines stop sending, faults eject."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from gateway.metrics import GatewayMetrics
from gateway.settings import EndpointSettings
from gateway.upstream.balancer import EjectionPolicy
from gateway.upstream.errors import UpstreamError
from gateway.upstream.pools import Pool, PoolDeps
from inference.protocol.errors import DeadlineExceeded, InvalidInput, ServerUnavailable


def make_pool(n=3, ratio=0.2, floor=0.0, hedge=None, after_failures=3) -> Pool:
    deps = PoolDeps(
        metrics=GatewayMetrics(),
        clock=time.monotonic,
        rng=random.Random(0),
        policy=EjectionPolicy(after_failures, 5.0, 30.0),
        budget_ratio=ratio,
        budget_min_per_s=floor,
        hedge_after_s=hedge,
    )
    return Pool("p", [EndpointSettings(grpc=f"127.0.0.1:{9 + i}") for i in range(n)], deps)


def unavailable():
    return UpstreamError(ServerUnavailable("down"), retryable=True, endpoint_fault=True)


async def test_retry_goes_to_another_endpoint():
    pool = make_pool(floor=10)
    tried = []

    async def attempt(endpoint, timeout_s):
        tried.append(endpoint.address)
        if len(tried) == 1:
            raise unavailable()
        return "ok"

    assert await pool.call(attempt, time.monotonic() + 1) == "ok"
    assert len(tried) == 2 and tried[0] != tried[1]
    await pool.close()


async def test_no_retry_without_budget_and_none_for_client_errors():
    pool = make_pool(ratio=0.0, floor=0.0)
    calls = []

    async def down(endpoint, timeout_s):
        calls.append(endpoint.address)
        raise unavailable()

    with pytest.raises(ServerUnavailable):
        await pool.call(down, time.monotonic() + 1)
    assert len(calls) == 1

    async def bad(endpoint, timeout_s):
        calls.append(endpoint.address)
        raise UpstreamError(InvalidInput("bad"), retryable=False, endpoint_fault=False)

    pool = make_pool(floor=10)
    calls.clear()
    with pytest.raises(InvalidInput):
        await pool.call(bad, time.monotonic() + 1)
    assert len(calls) == 1


async def test_expired_deadline_sends_nothing():
    pool = make_pool()
    calls = []

    async def attempt(endpoint, timeout_s):
        calls.append(timeout_s)
        return "ok"

    with pytest.raises(DeadlineExceeded):
        await pool.call(attempt, time.monotonic() - 0.001)
    assert calls == []
    await pool.call(attempt, time.monotonic() + 0.5)
    assert 0.4 < calls[0] <= 0.5  # the remaining time is the upstream timeout


async def test_hedge_races_a_slow_endpoint():
    pool = make_pool(n=2, floor=10, hedge=0.02)
    slow = pool.endpoints[0].address
    pool.endpoints[1].state.inflight = 5  # P2C picks the slow one first

    async def attempt(endpoint, timeout_s):
        await asyncio.sleep(1.0 if endpoint.address == slow else 0.01)
        return endpoint.address

    start = time.monotonic()
    winner = await pool.call(attempt, time.monotonic() + 2)
    assert winner != slow and time.monotonic() - start < 0.5


async def test_repeated_faults_eject_the_endpoint():
    pool = make_pool(n=2, floor=0, ratio=0, after_failures=2)
    bad = pool.endpoints[0].address

    async def attempt(endpoint, timeout_s):
        if endpoint.address == bad:
            raise unavailable()
        return "ok"

    for _ in range(20):
        try:
            await pool.call(attempt, time.monotonic() + 1)
        except ServerUnavailable:
            pass
    assert pool.endpoints[0].state.ejected(time.monotonic())
    assert pool.ready_endpoints() == 1
    # while it is ejected every call goes to the good one
    assert all([await pool.call(attempt, time.monotonic() + 1) == "ok" for _ in range(10)])


async def test_set_endpoints_keeps_existing_state():
    pool = make_pool(n=2)
    first = pool.endpoints[0]
    first.state.inflight = 3
    pool.set_endpoints([first.settings, EndpointSettings(grpc="127.0.0.1:99")])
    assert pool.endpoints[0] is first and first.state.inflight == 3
    assert [e.address for e in pool.endpoints] == [first.address, "127.0.0.1:99"]
    await pool.close()
