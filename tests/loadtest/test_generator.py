"""The open-loop generator keeps its schedule and shows queueing; processes merge."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections import Counter

import aiohttp
import pytest

from loadtest.openloop import arrivals, closed_loop, open_loop
from loadtest.recorder import TIMEOUT, Interval, is_ok
from loadtest.runner import RunPlan, run
from loadtest.scenarios import FeedSessions, ScenarioSpec
from loadtest.targets import LoadTestError, Target
from tests.loadtest.slow_server import SlowServer

# the tests that start the slow server or load processes, or open sockets, are marked
# integration one by one; the schedule, merge and clock tests are unit tests


def feed_sender(session: aiohttp.ClientSession, url: str):
    async def send() -> int:
        async with session.post(f"{url}/v1/feed", json={"user_id": 1}) as resp:
            await resp.read()
            return resp.status

    return send


async def measure(url: str, rate: float, duration: float):
    async with aiohttp.ClientSession() as session:
        return await open_loop(feed_sender(session, url), rate, duration)


SERVICE_S = 0.02  # the slow server's service time: capacity 50/s, one at a time


@pytest.mark.integration
@pytest.mark.timing
def test_rate_is_kept_and_queueing_shows_in_p99():
    # capacity 50/s: under it latency is about the service time; over it requests
    # queue, and since latency counts from the scheduled start, p99 grows with the
    # queue. The server serves one request at a time, each >= SERVICE_S: the bounds
    # below follow from that alone (a slower machine only makes them hold more).
    with SlowServer(service_s=SERVICE_S) as server:
        under = asyncio.run(measure(server.url, 25, 2.0))
        over = asyncio.run(measure(server.url, 100, 2.0))
        handled = server.handled
    assert under.sent == 50 and under.statuses == Counter({"200": 50})
    assert over.sent == 200 and over.statuses == Counter({"200": 200})  # open loop
    assert handled == 250 and under.start_lag.get_total_count() == 50
    # no answer comes before its service time (small margin for the timer's rounding)
    assert under.percentile_ms(0) >= 0.95 * SERVICE_S * 1000
    # 200 requests take >= 4 s of service: request k (scheduled at k x 10 ms) ends
    # >= (k + 1) x 20 ms, so its latency is >= 20 ms + k x 10 ms: >= 76% of them wait
    # >= 0.5 s and >= 26% wait >= 1.5 s; the rate achieved is <= 50/s
    assert over.elapsed_s >= 0.95 * 200 * SERVICE_S and over.achieved_rate <= 50 * 1.05
    assert over.percentile_ms(50) >= 500 and over.percentile_ms(99) >= 1500
    # under capacity there is no such queue: its median is well below the queued one
    # (~20 ms against >= 500 ms; a 4x margin for a loaded machine)
    assert under.percentile_ms(50) * 4 < over.percentile_ms(50)


@pytest.mark.integration
def test_closed_loop_records_every_latency_in_the_hdr_recorder():
    # 4 workers back to back on a server that serves one request at a time in 20 ms
    async def closed(url: str):
        async with aiohttp.ClientSession() as session:
            return await closed_loop(feed_sender(session, url), 4, 1.0)

    with SlowServer(service_s=SERVICE_S) as server:
        result = asyncio.run(closed(server.url))
        handled = server.handled
    assert set(result.statuses) == {"200"} and result.ok == handled >= 4
    assert result.total.histogram.get_total_count() == result.total.completed == handled
    # serial service: no more than 50/s, and no answer before its 20 ms
    assert result.elapsed_s >= 1.0 and result.rate <= 50 * 1.05
    assert result.percentile_ms(0) >= 0.95 * SERVICE_S * 1000
    assert result.summary()["concurrency"] == 4


async def test_closed_loop_counts_errors_as_statuses():
    async def broken() -> str:
        await asyncio.sleep(0.01)
        raise RuntimeError("no")

    result = await closed_loop(broken, 2, 0.2)
    assert set(result.statuses) == {"RuntimeError"} and result.ok == 0 and result.rate == 0
    assert result.total.errors == {"RuntimeError": result.total.completed}
    assert result.total.completed >= 2  # each worker finished at least one
    assert result.percentile_ms(0) >= 9.5  # the failed call's own 10 ms is measured


async def test_unanswered_requests_are_timeouts():
    async def never() -> str:
        await asyncio.sleep(60)
        return "200"

    result = await open_loop(never, 20, 0.5, timeout_s=0.2)
    assert result.statuses == Counter({TIMEOUT: 10})
    # measured up to the timeout (>= 200 ms), not to the 60 s answer
    assert 195 <= result.percentile_ms(0) and result.percentile_ms(100) < 30_000


async def test_latency_and_start_lag_count_from_the_scheduled_start():
    # an injected clock (open_loop's ``clock``): it already reads 5 s when the schedule
    # (10/s from t = 0) begins, so every request starts late by a known amount, and the
    # instant answers' latencies are that lateness: no coordinated omission
    async def instant() -> int:
        return 200

    result = await open_loop(instant, 10, 1.0, start=0.0, clock=lambda: 5.0)
    assert result.sent == 10 and result.statuses == Counter({"200": 10})
    ats = [k / 10 for k in range(10)]
    lags_us = sorted(int((5.0 - at) * 1e6) for at in ats)
    assert result.start_lag.get_total_count() == 10
    assert result.start_lag.get_min_value() == pytest.approx(lags_us[0], rel=1e-3)
    assert result.start_lag.get_max_value() == pytest.approx(lags_us[-1], rel=1e-3)
    assert result.percentile_ms(0) == pytest.approx(4100, rel=1e-3)  # scheduled at 0.9 s
    assert result.percentile_ms(100) == pytest.approx(5000, rel=1e-3)  # scheduled at 0
    assert result.elapsed_s == 5.0


@pytest.mark.integration
async def test_transport_errors_are_results():
    async with aiohttp.ClientSession() as session:
        result = await open_loop(feed_sender(session, "http://127.0.0.1:9"), 20, 0.25)
    assert result.sent == 5 and result.ok == 0
    assert result.statuses == Counter({"ClientConnectorError": 5})


def test_constant_schedule_is_shared_exactly_across_processes():
    one = list(arrivals(100, 2.0, poisson=False))
    parts = [list(arrivals(100, 2.0, poisson=False, offset=i, stride=3)) for i in range(3)]
    assert len(one) == 200 and sorted(t for p in parts for t in p) == one


def test_poisson_arrivals_are_seeded_and_average_the_rate():
    a = list(arrivals(200, 20.0, poisson=True, seed=7, offset=1, stride=2))
    b = list(arrivals(200, 20.0, poisson=True, seed=7, offset=1, stride=2))
    c = list(arrivals(200, 20.0, poisson=True, seed=7, offset=0, stride=2))
    assert a == b and a != c
    assert 1900 <= len(a) <= 2100  # 100/s each for 20 s (sd ~45)
    gaps = [y - x for x, y in itertools.pairwise(a)]
    assert max(gaps) > 5 * (sum(gaps) / len(gaps))  # exponential gaps, not a metronome


def test_intervals_merge_exactly_through_the_wire():
    rng = random.Random(3)
    values = [rng.lognormvariate(-4, 1) for _ in range(5000)]
    whole, parts = Interval(), [Interval(), Interval(), Interval()]
    for i, v in enumerate(values):
        status = "200" if i % 50 else "503"
        whole.record(status, v)
        parts[i % 3].record(status, v)
    merged = Interval()
    for part in parts:
        merged.add(Interval.from_wire(part.to_wire()))
    assert merged.statuses == whole.statuses == Counter({"200": 4900, "503": 100})
    for p in (50, 90, 99, 99.9, 100):
        assert merged.percentile_ms(p) == whole.percentile_ms(p)
    assert merged.errors == {"503": 100} and merged.ok == 4900
    assert is_ok("OK") and is_ok("204") and not is_ok("UNAVAILABLE") and not is_ok("2xx")


@pytest.mark.integration
def test_nice_applies_to_the_generator_processes_only():
    # loadtest/runner.py RunPlan.nice: the worker processes run at that niceness (so the
    # servers they share a machine with keep the CPU first); this process does not
    import threading

    import psutil

    plan = RunPlan(Target.parse("http://127.0.0.1:1"), ScenarioSpec("feed"), (20.0,), 1.5, nice=7)
    seen: dict[int, int] = {}
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            for child in psutil.Process().children():
                with contextlib.suppress(psutil.Error):
                    if "spawn_main" in " ".join(child.cmdline()):
                        seen[child.pid] = child.nice()
            time.sleep(0.05)

    own = psutil.Process().nice()
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        (step,) = run(plan, check=False)  # nothing listens: every request fails fast
    finally:
        done.set()
        watcher.join()
    assert step.sent > 0 and seen and set(seen.values()) == {max(own, 7)}
    assert psutil.Process().nice() == own


def test_nice_out_of_range_is_refused():
    for bad in (-1, 20):
        with pytest.raises(LoadTestError, match="nice must be within"):
            RunPlan(Target.parse("http://127.0.0.1:1"), ScenarioSpec("feed"), (1.0,), 1.0, nice=bad)


@pytest.mark.integration
def test_processes_merge_into_one_report():
    with SlowServer(service_s=0.001) as server:
        plan = RunPlan(Target.parse(server.url), ScenarioSpec("feed"), (60.0,), 2.0, processes=3)
        (step,) = run(plan, check=False)  # no probe request: count only the load
        handled = server.handled
    # every scheduled request was sent once, by one of the processes, and recorded once
    assert step.sent == 120 and step.total.completed == 120 == handled
    assert step.total.statuses == Counter({"200": 120})
    assert len(step.timeline) == 2
    assert sum(iv.completed for iv in step.timeline) == 120
    assert step.total.histogram.get_total_count() == 120
    assert step.start_lag.get_total_count() == 120  # every process's lag merged
    assert step.achieved_rate <= 60  # never more than the schedule (a count, not a speed)


@pytest.mark.integration
@pytest.mark.timing
def test_rate_steps_stop_at_the_first_miss():
    # 120/s for 2 s on a 50/s server misses for sure: request k ends >= (k + 1) x 20 ms
    # but was scheduled at k / 120 s, so >= 65% of them wait >= 1 s (the p99 budget)
    # and <= 50/s is achieved. 10/s and 30/s meet it unless a request is ~1 s late.
    with SlowServer(service_s=SERVICE_S) as server:
        plan = RunPlan(
            Target.parse(server.url),
            ScenarioSpec("feed"),
            (10.0, 30.0, 120.0, 200.0),
            2.0,
            p99_budget_ms=1000,
        )
        steps = run(plan)
        handled = server.handled
    assert [s.rate for s in steps] == [10.0, 30.0, 120.0]  # 200 never ran
    assert [s.meets(plan) for s in steps] == [True, True, False]
    assert steps[2].total.percentile_ms(99) > 1000 and steps[2].achieved_rate <= 50 * 1.05
    assert [s.sent for s in steps] == [20, 60, 240] and handled == 1 + 20 + 60 + 240  # + probe


def test_feed_sessions_send_what_was_shown_as_seen():
    spec = ScenarioSpec(
        "feed", users=1000, next_page_share=1.0, feed_count=2, feed_history=3, items=50
    )
    sessions = FeedSessions(spec, random.Random(1))
    user, seen, history, ctx = sessions.next()
    assert seen == [] and 0 <= user < 1000 and 0 <= ctx["hour"] < 24
    assert len(history) == 3 and all(0 <= i < 50 for i in history)
    pages, shown = 1, [10, 11]
    sessions.shown(user, seen, history, shown)
    while True:  # with next_page_share 1 the open session is always continued
        next_user, seen, next_history, _ = sessions.next()
        if seen == []:
            break
        # its next page carries all it was shown, and the same history
        assert next_user == user and seen == shown and next_history == history
        pages += 1
        new = [shown[-1] + 1, shown[-1] + 2]
        sessions.shown(user, seen, history, new)
        shown = seen + new
    assert pages == 5  # a session lasts until 4 pages' worth was seen, then the app reopens
