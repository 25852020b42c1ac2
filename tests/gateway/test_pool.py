"""Pool.call with scripted attempts: retries go to another endpoint within the budget,
hedges race, deadlines stop sending, faults eject; ``PoolRegistry.update`` retires
removed endpoints after their in-flight calls (fake endpoints: no channel, no socket)."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from gateway.metrics import GatewayMetrics
from gateway.settings import EndpointSettings
from gateway.upstream.balancer import EjectionPolicy, EndpointState
from gateway.upstream.errors import UpstreamError
from gateway.upstream.pools import Pool, PoolDeps, PoolRegistry
from inference.protocol.errors import DeadlineExceeded, InvalidInput, Overloaded, ServerUnavailable
from inference.protocol.loadreport import LoadReport


def make_pool(n=3, ratio=0.2, floor=0.0, hedge=None, after_failures=3, metrics=None) -> Pool:
    deps = PoolDeps(
        metrics=metrics or GatewayMetrics(),
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
    metrics = GatewayMetrics()
    pool = make_pool(n=2, floor=10, hedge=0.02, metrics=metrics)
    slow = pool.endpoints[0].address
    pool.endpoints[1].state.inflight = 5  # P2C picks the slow one first
    never = asyncio.Event()  # the slow endpoint never answers: only a hedge can win
    cancelled = []

    async def attempt(endpoint, timeout_s):
        if endpoint.address == slow:
            try:
                await never.wait()
            except asyncio.CancelledError:
                cancelled.append(endpoint.address)
                raise
        return endpoint.address

    winner = await asyncio.wait_for(pool.call(attempt, time.monotonic() + 60), 30)
    assert winner != slow
    assert cancelled == [slow]  # the losing copy is cancelled, not left running
    hedges = metrics.registry.get_sample_value(
        "tenfold_gateway_upstream_retries_total", {"pool": "p", "kind": "hedge"}
    )
    assert hedges == 1


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


# --- PoolRegistry.update: removed endpoints close after their in-flight calls ---------


class FakeEndpoint:
    """An endpoint without a channel: records when it is closed."""

    def __init__(self, settings: EndpointSettings, policy: EjectionPolicy, events: list) -> None:
        self.settings = settings
        self.state = EndpointState(settings.grpc, policy)
        self.events = events
        self.closed = asyncio.Event()

    @property
    def address(self) -> str:
        return self.settings.grpc

    async def close(self, grace: float | None = None) -> None:
        self.events.append(("closed", self.address))
        self.closed.set()


def fake_pool(addresses: list[str], events: list) -> Pool:
    deps = PoolDeps(
        metrics=GatewayMetrics(),
        clock=time.monotonic,
        rng=random.Random(0),
        policy=EjectionPolicy(3, 5.0, 30.0),
        budget_ratio=0.2,
        budget_min_per_s=10,
        hedge_after_s=None,
        make_endpoint=lambda settings, policy: FakeEndpoint(settings, policy, events),
    )
    return Pool("p", [EndpointSettings(grpc=a) for a in addresses], deps)


async def settle(rounds: int = 20) -> None:
    """Let every ready task run (a close scheduled without waiting would run here)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


async def test_update_closes_a_removed_endpoint_only_after_its_call_in_flight():
    # guards docs/gateway.md (Pools): "`Upstream.update(pool, endpoints)` ... kept
    # endpoints keep their channel; removed ones close after their in-flight calls"
    events: list = []
    registry = PoolRegistry({"p": fake_pool(["old:1"], events)})
    release = asyncio.Event()
    arrived = asyncio.Event()

    async def attempt(endpoint, timeout_s):
        if endpoint.address == "old:1" and not arrived.is_set():  # the first call: held
            arrived.set()
            await release.wait()
        events.append(("answered", endpoint.address))
        return endpoint.address

    in_flight = asyncio.create_task(registry.get("p").call(attempt, time.monotonic() + 60))
    await asyncio.wait_for(arrived.wait(), 10)
    old = registry.get("p").endpoints[0]

    registry.update("p", [EndpointSettings(grpc="new:1")])
    await settle()
    assert not old.closed.is_set(), "closed with a call still in flight"
    # new calls go only to the new endpoint, while the old one still has its call
    answers = [await registry.get("p").call(attempt, time.monotonic() + 60) for _ in range(5)]
    assert answers == ["new:1"] * 5
    assert not in_flight.done()

    release.set()
    assert await asyncio.wait_for(in_flight, 10) == "old:1"  # the call in flight completes
    await asyncio.wait_for(old.closed.wait(), 10)  # ... and then the endpoint closes
    assert events.index(("answered", "old:1")) < events.index(("closed", "old:1"))
    assert ("closed", "new:1") not in events
    # nor after it finished (P2C on in-flight alone would have avoided it before)
    answers = [await registry.get("p").call(attempt, time.monotonic() + 60) for _ in range(20)]
    assert answers == ["new:1"] * 20
    await registry.close()


async def test_update_closes_an_idle_removed_endpoint_and_keeps_the_others():
    events: list = []
    registry = PoolRegistry({"p": fake_pool(["a:1", "b:1"], events)})
    a, b = registry.get("p").endpoints
    registry.update("p", [b.settings, EndpointSettings(grpc="c:1")])
    await asyncio.wait_for(a.closed.wait(), 10)  # nothing in flight: closed at once
    assert registry.get("p").endpoints[0] is b and not b.closed.is_set()
    assert [e.address for e in registry.get("p").endpoints] == ["b:1", "c:1"]
    await registry.close()


def test_an_endpoints_expected_wait_follows_its_report_the_clock_and_what_was_sent_since():
    state = EndpointState("a", EjectionPolicy())
    assert state.expected_wait(0.0) is None and state.serves_within(0.1, 0.0)
    state.reported(LoadReport(wait_s=3.0, row_s=0.5), now=10.0)
    assert state.expected_wait(11.0) == pytest.approx(2.0)  # the queue drained a second
    assert state.expected_wait(20.0) == pytest.approx(0.5)  # never less than one row
    state.started(11.0)
    state.started(11.0)
    assert state.expected_wait(11.0) == pytest.approx(3.0)  # two rows more
    assert not state.serves_within(2.9, 11.0) and state.serves_within(3.0, 11.0)
    state.reported(None, 12.0)  # an answer without a report changes nothing
    assert state.expected_wait(12.0) == pytest.approx(2.0)


async def test_a_full_pool_sheds_without_sending_and_a_free_endpoint_still_gets_the_request():
    metrics = GatewayMetrics()
    pool = make_pool(n=2, metrics=metrics)
    now = time.monotonic()
    busy, free = pool.endpoints
    busy.state.reported(LoadReport(wait_s=30.0, row_s=0.3), now)
    sent = []

    async def attempt(endpoint, timeout_s):
        sent.append(endpoint.address)
        return "ok"

    for _ in range(5):
        assert await pool.call(attempt, time.monotonic() + 5) == "ok"
    assert sent == [free.address] * 5
    free.state.reported(LoadReport(wait_s=9.0, row_s=0.3), time.monotonic())
    with pytest.raises(Overloaded, match="pool 'p' is full"):
        await pool.call(attempt, time.monotonic() + 5)
    assert len(sent) == 5  # no pod was sent it
    assert (
        metrics.registry.get_sample_value("tenfold_gateway_upstream_full_total", {"pool": "p"}) == 1
    )
    await pool.close()
