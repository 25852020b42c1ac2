"""The adaptive concurrency limit (gateway/concurrency.py), driven by a fake clock and
scripted latencies, and its admission (gateway/admission.py)."""

from __future__ import annotations

import asyncio
import math
import random

import pytest
from pydantic import ValidationError

from gateway.admission import AdaptiveAdmission
from gateway.concurrency import GradientLimit, GradientSettings
from inference.protocol.errors import TooManyRequests

S = GradientSettings(
    min_limit=3,
    max_limit=100,
    initial_limit=16,
    window_s=0.1,
    min_window_samples=5,
    buffer=1.0,
    min_rtt_interval_s=60,
    min_rtt_samples=10,
    jitter=0.1,
    min_windows_to_remeasure=3,
)


def measured(floor: float = 0.010, settings: GradientSettings = S) -> tuple[GradientLimit, float]:
    """A controller past its first floor measurement (``floor`` seconds), and the time."""
    limit = GradientLimit(settings, now=0.0, rng=random.Random(7))
    for i in range(settings.min_rtt_samples):
        limit.observe(limit.epoch, floor, now=0.001 * i)
    return limit, 0.001 * settings.min_rtt_samples


def window(limit: GradientLimit, now: float, latency: float, n: int = 10) -> float:
    """``n`` requests of ``latency`` finish within one window; the next window opens."""
    for _ in range(n):
        limit.observe(limit.epoch, latency, now)
    now += S.window_s
    limit.advance(now)
    return now


def test_the_floor_is_measured_first_with_the_limit_pinned():
    limit = GradientLimit(S, now=0.0)
    assert (limit.measuring, limit.limit) == (True, S.min_limit)
    for i in range(S.min_rtt_samples - 1):
        limit.observe(limit.epoch, 0.010 + 0.001 * i, now=0.01 * i)
    assert limit.measuring and limit.min_rtt_s is None
    limit.observe(limit.epoch, 0.050, now=0.2)
    # the median of 10, 11, ..., 18 ms and 50 ms
    assert limit.min_rtt_s == pytest.approx(0.0145)
    assert (limit.measuring, limit.limit) == (False, S.initial_limit)


def test_latency_near_the_floor_grows_the_limit_by_the_gradient_and_headroom():
    limit, now = measured(0.010)
    window(limit, now, 0.010)  # gradient (10 ms x 2) / 10 ms = 2
    grown = 16 * 2.0
    assert limit.limit == int(grown + math.sqrt(grown))


def test_without_headroom_a_one_at_a_time_backend_settles_at_one_plus_buffer():
    # a pod that serves one request at a time: latency = limit x 10 ms
    settings = S.model_copy(update={"headroom": "none", "min_limit": 1})
    limit, now = measured(0.010, settings)
    for _ in range(30):
        now = window(limit, now, 0.010 * limit.limit)
    assert limit.limit == 2  # (1 + buffer): admitted latency within 2x the floor
    sqrt_limit, now = measured(0.010, S.model_copy(update={"min_limit": 1}))
    for _ in range(30):
        now = window(sqrt_limit, now, 0.010 * sqrt_limit.limit)
    assert sqrt_limit.limit >= 3  # Envoy's sqrt headroom keeps a queue on such a pod


def test_latency_over_the_allowance_shrinks_the_limit_at_most_by_half():
    limit, now = measured(0.010)
    now = window(limit, now, 0.040)  # gradient 20 / 40 = 0.5
    assert limit.limit == int(8 + math.sqrt(8))
    window(limit, now, 1.0)  # clamped at 0.5 however slow
    half = int(8 + math.sqrt(8)) / 2
    assert limit.limit == int(half + math.sqrt(half))


def test_a_latency_target_over_the_floors_allowance_is_the_allowance():
    # floor 10 ms, buffer 1: 20 ms alone; with a 100 ms target, 40 ms is inside it
    targeted = S.model_copy(update={"latency_target_ms": 100.0})
    limit, now = measured(0.010, targeted)
    assert limit.allowance_s == pytest.approx(0.100)
    window(limit, now, 0.040)  # gradient 100 / 40, clamped at 2: the limit grows
    assert limit.limit == int(32 + math.sqrt(32))
    plain, now = measured(0.010)
    assert plain.allowance_s == pytest.approx(0.020)
    window(plain, now, 0.040)  # the same window without the target shrinks the limit
    assert plain.limit == int(8 + math.sqrt(8))
    # over the target it shrinks as before: gradient 100 / 200 = 0.5
    limit, now = measured(0.010, targeted)
    window(limit, now, 0.200)
    assert limit.limit == int(8 + math.sqrt(8))
    # a target under the floor's allowance changes nothing
    low = S.model_copy(update={"latency_target_ms": 5.0})
    limit, now = measured(0.010, low)
    assert limit.allowance_s == pytest.approx(0.020)


def test_the_limit_stays_within_its_bounds():
    limit, now = measured(0.010)
    for _ in range(10):
        now = window(limit, now, 0.001)
    assert limit.limit == S.max_limit
    limit, now = measured(0.010)
    window(limit, now, 10.0)
    for _ in range(2):
        now = window(limit, now, 10.0)
        assert limit.limit >= S.min_limit


def test_a_window_with_too_few_answers_keeps_the_limit():
    limit, now = measured(0.010)
    window(limit, now, 1.0, n=S.min_window_samples - 1)
    assert limit.limit == S.initial_limit


def test_answers_admitted_before_a_phase_change_are_not_samples():
    limit = GradientLimit(S, now=0.0)
    old = limit.epoch
    for i in range(S.min_rtt_samples):
        limit.observe(limit.epoch, 0.010, now=0.001 * i)
    assert not limit.measuring
    # requests admitted while measuring (old epoch) finish slowly: ignored
    for _ in range(20):
        limit.observe(old, 5.0, now=0.05)
    limit.advance(0.2)
    assert limit.limit == S.initial_limit


def test_the_floor_is_remeasured_after_the_jittered_interval():
    limit, now = measured(0.010)
    due = [None]
    t = now
    while not limit.measuring:
        t += 1.0
        limit.advance(t)
        due[0] = t
    assert S.min_rtt_interval_s * (1 - S.jitter) <= due[0] - now
    assert due[0] - now <= S.min_rtt_interval_s * (1 + S.jitter) + 1.0
    assert limit.limit == S.min_limit
    for i in range(S.min_rtt_samples):
        limit.observe(limit.epoch, 0.030, now=t + 0.001 * i)
    assert limit.min_rtt_s == pytest.approx(0.030)
    assert not limit.measuring


def test_a_limit_stuck_at_its_minimum_remeasures_the_floor_early():
    limit, now = measured(0.010)
    for _ in range(12):  # the limit halves down to 3 (7 windows), then 3 more there
        now = window(limit, now, 5.0)  # the floor itself has risen
        if limit.measuring:
            break
    assert limit.measuring and limit.limit == S.min_limit


def test_settings_refuse_an_initial_limit_outside_the_bounds():
    with pytest.raises(ValidationError, match="min_limit <= initial_limit"):
        GradientSettings(min_limit=10, initial_limit=5)


async def measured_admission(queue: int = 4, wait_s: float = 0.05) -> AdaptiveAdmission:
    """An admission whose limit has measured its floor (10 ms): the limit is 16."""
    adm = AdaptiveAdmission(GradientLimit(S, now=0.0), queue, wait_s)
    for i in range(S.min_rtt_samples):
        epoch = await adm.acquire(0.001 * i)
        adm.release(epoch, 0.010, 0.001 * i)
    assert not adm.controller.measuring
    return adm


async def test_over_the_limit_a_request_is_refused_at_once():
    adm = await measured_admission()
    held = [await adm.acquire(0.02) for _ in range(S.initial_limit)]
    loop = asyncio.get_running_loop()
    began = loop.time()
    with pytest.raises(TooManyRequests):
        await adm.acquire(0.02)
    assert loop.time() - began < 0.01  # no queue: refused without waiting
    adm.release(held.pop(), 0.010, 0.021)
    assert adm.inflight == S.initial_limit - 1
    await adm.acquire(0.022)
    assert adm.inflight == S.initial_limit


async def settle() -> None:
    """Let woken tasks run (a handed-over slot takes a few loop turns to arrive)."""
    for _ in range(10):
        await asyncio.sleep(0)


async def test_while_the_floor_is_measured_a_few_wait_instead_of_being_refused():
    adm = AdaptiveAdmission(GradientLimit(S, now=0.0), 4, 5.0)
    held = [await adm.acquire(0.0) for _ in range(S.min_limit)]
    waiting = [asyncio.create_task(adm.acquire(0.0)) for _ in range(4)]
    await asyncio.sleep(0)
    with pytest.raises(TooManyRequests):  # the queue (4) is full
        await adm.acquire(0.0)
    assert not any(t.done() for t in waiting)
    adm.release(held.pop(), 0.010, 0.001)  # one place: the first waiter takes it
    await settle()
    assert [t.done() for t in waiting] == [True, False, False, False]
    # the measurement ends: the limit rises to 16 and every waiter gets a place at once
    for _ in range(S.min_rtt_samples):
        adm.controller.observe(adm.controller.epoch, 0.010, 0.002)
    adm.release(held.pop(), 0.010, 0.003)
    await settle()
    assert all(t.done() for t in waiting)
    assert adm.inflight == S.min_limit - 2 + 4


def test_the_minimum_is_per_ready_endpoint_behind_the_route():
    # gateway/concurrency.py: "The minimum is min_limit per ready endpoint behind the
    # route"; with one endpoint nothing changes (the tests above)
    limit = GradientLimit(S, now=0.0)
    limit.endpoints = 4
    assert (limit.measuring, limit.limit) == (True, 4 * S.min_limit)  # measured per pod
    for i in range(S.min_rtt_samples):
        limit.observe(limit.epoch, 0.010, now=0.001 * i)
    now = 0.001 * S.min_rtt_samples
    for _ in range(S.min_windows_to_remeasure - 1):
        now = window(limit, now, 10.0)  # far over the allowance: down to the minimum
    assert limit.limit == 4 * S.min_limit and not limit.measuring
    now = window(limit, now, 10.0)
    assert limit.measuring and limit.limit == 4 * S.min_limit  # at its minimum: re-measure
    limit.endpoints = 1  # the pool shrank
    assert limit.limit == S.min_limit


async def test_the_admission_applies_the_routes_endpoint_count():
    adm = AdaptiveAdmission(GradientLimit(S, now=0.0), 0, 0.0)
    held = [await adm.acquire(0.0, endpoints=2) for _ in range(2 * S.min_limit)]
    with pytest.raises(TooManyRequests):
        await adm.acquire(0.0, endpoints=2)
    with pytest.raises(TooManyRequests):  # one endpoint: the old minimum again
        await adm.acquire(0.0, endpoints=1)
    assert len(held) == 6
