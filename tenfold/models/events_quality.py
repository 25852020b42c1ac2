"""Does the state the events build make the feed better? Held-out simulated users'
recent positives are replayed through ``POST /v1/events`` to a real gateway with an
event store (a real Redis, pod and stream processor, started here); each user's feed is
asked for without a history, before the replay (no state) and after it (history from
state), and scored on the user's held-out finishes (``feed_quality.page_metrics``).

    tenfold models events-quality --repository var/model-repository

The simulation is re-run from the build's seed (``build_report.json``) to know the
users' histories and held-out positives; it is the one the build trained on.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import requests

from gateway.events.launch import start_processor
from gateway.launch import gateway_config, start_gateway
from inference.launch import start_pod
from servicekit.redis import redis_url, start_redis
from tenfold.models.feed import FeedData
from tenfold.models.feed_quality import Probe, page_metrics, probes
from tenfold.models.simulate import SimConfig, simulate


def simulated_data(repository: Path) -> FeedData:
    report = json.loads((repository / "build_report.json").read_text())
    cfg = SimConfig.quick() if report["quick"] else SimConfig()
    cfg = SimConfig(**{**cfg.__dict__, "seed": int(report["seed"])})
    world, logs = simulate(cfg)
    return FeedData.split(cfg, world, logs)


def _page(http: str, probe: Probe) -> dict:
    body = probe.body.model_dump(exclude={"history"})
    answer = requests.post(f"http://{http}/v1/feed", json=body, timeout=10)
    answer.raise_for_status()
    return answer.json()


def replay(http: str, probes_: list[Probe], timeout_s: float = 60.0) -> dict:
    """The probes' pages without state, then with their histories replayed as finishes."""
    before = [_page(http, p) for p in probes_]
    now = time.time()
    for probe in probes_:
        history = probe.body.history
        events = [
            {
                "user_id": probe.body.user_id,
                "item_id": item,
                "type": "finish",
                "ts": now - len(history) + n,
            }
            for n, item in enumerate(history)
        ]
        if events:
            answer = requests.post(f"http://{http}/v1/events", json={"events": events}, timeout=10)
            answer.raise_for_status()
    deadline = time.monotonic() + timeout_s
    replayed = [p for p in probes_ if p.body.history]
    while _page(http, replayed[-1])["history_source"] != "state":
        if time.monotonic() > deadline:
            raise TimeoutError(f"the replayed events not in the state after {timeout_s:g} s")
        time.sleep(0.05)
    after = [_page(http, p) for p in probes_]
    items = lambda pages: [[i["item_id"] for i in p["items"]] for p in pages]  # noqa: E731
    return {
        "users": len(probes_),
        "replayed_events": sum(len(p.body.history) for p in probes_),
        "without_state": page_metrics(items(before), probes_),
        "with_state": page_metrics(items(after), probes_),
        "history_from_state": sum(p["history_source"] == "state" for p in after),
    }


def events_quality(repository: Path, n_users: int = 300) -> dict:
    repository = repository.resolve()
    probes_ = probes(simulated_data(repository), n_users, with_history=True)
    with tempfile.TemporaryDirectory(prefix="tenfold-events-quality-") as data:
        server = start_redis(Path(data))
        url = redis_url(server)
        pod = start_pod(repository)
        gateway = processor = None
        try:
            gateway = start_gateway(gateway_config(repository, [pod], events={"redis_url": url}))
            processor = start_processor(url, "quality")
            return replay(gateway.http, probes_)
        finally:
            for child in (processor, gateway, pod, server):
                if child is not None:
                    child.stop()
