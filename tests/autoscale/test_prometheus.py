"""The Prometheus source against a real Prometheus (Debian's ``prometheus``, started
here on a free loopback port with a generated scrape config) scraping a real gateway.
Skipped, saying so, where Prometheus is not installed (``make prometheus``)."""

from __future__ import annotations

import threading
import time

import pytest
import requests

from autoscale.sources import PrometheusSource
from gateway.launch import start_gateway
from tests.gateway.conftest import wait_until
from tests.prom import MISSING, PROMETHEUS, running_prometheus

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(PROMETHEUS is None, reason=MISSING),
]


@pytest.fixture
def gateway():
    # a pool whose only endpoint is closed: every feed is answered (503) and counted
    gw = start_gateway({"pools": {"default": {"endpoints": [{"grpc": "127.0.0.1:9"}]}}})
    yield gw
    gw.stop()


@pytest.fixture
def prometheus(tmp_path, gateway):
    scrape = {"job_name": "tenfold", "static_configs": [{"targets": [gateway.http]}]}
    with running_prometheus(tmp_path, [scrape]) as url:
        yield url


def test_the_prometheus_source_reads_the_gateways_arrival_rate(prometheus, gateway):
    stop = threading.Event()

    def offer(rate: float) -> None:  # ~rate feeds a second, answered or not
        session, next_at = requests.Session(), time.monotonic()
        while not stop.is_set():
            session.post(f"http://{gateway.http}/v1/feed", json={"user_id": 1}, timeout=5)
            next_at += 1 / rate
            time.sleep(max(0.0, next_at - time.monotonic()))

    load = threading.Thread(target=offer, args=(20.0,), daemon=True)
    load.start()
    feed = PrometheusSource(prometheus, ["feed"], window="5s")
    try:
        observations: list[tuple[float, float]] = []

        def settled() -> bool:
            # once the 5 s window holds only the steady load (a series' first seconds
            # read low), three reads in a row agree
            observation = feed.observe(1)
            if observation is not None:
                observations.append((time.monotonic(), observation.arrival_rate))
            if len(observations) < 3 or observations[-1][0] - observations[0][0] < 8:
                return False
            last = [rate for _, rate in observations[-3:]]
            return min(last) > 0 and max(last) <= 1.2 * min(last)

        wait_until(settled, "a steady rate from Prometheus", 60, every=0.5)
    finally:
        stop.set()
        load.join(10)
    assert 14 <= observations[-1][1] <= 26, observations  # 20/s offered
    # a route nobody called has no series: unknown, never read as zero demand
    assert PrometheusSource(prometheus, ["effects"], window="5s").observe(1) is None
