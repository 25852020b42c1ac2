"""Metric sources on canned answers (the Prometheus exposition text and the HTTP API's
JSON): rates from counter growth, every status counted as demand, and no number made
up when the source fails or has nothing."""

from __future__ import annotations

import json

import pytest

from autoscale.sources import PrometheusSource, ScrapeSource, totals

EXPOSITION = """\
# HELP tenfold_gateway_arrivals_total Requests received.
# TYPE tenfold_gateway_arrivals_total counter
tenfold_gateway_arrivals_total{{route="feed"}} {feed_ok}
tenfold_gateway_arrivals_total{{route="effects"}} 7.0
tenfold_gateway_arrivals_total{{route="infer"}} 1000.0
# HELP tenfold_gateway_requests_total Requests answered.
# TYPE tenfold_gateway_requests_total counter
tenfold_gateway_requests_total{{route="feed",code="200",arm=""}} 999.0
# HELP tenfold_gateway_inflight_requests Requests being handled.
# TYPE tenfold_gateway_inflight_requests gauge
tenfold_gateway_inflight_requests{{route="feed"}} 3.0
tenfold_gateway_inflight_requests{{route="effects"}} 2.0
"""


def text(feed: float, feed_shed: float = 0.0) -> str:
    """``feed`` requests arrived, ``feed_shed`` more of them refused (arrivals too)."""
    return EXPOSITION.format(feed_ok=feed + feed_shed)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_totals_count_shed_requests_as_demand_and_only_the_pools_routes():
    assert totals(text(100.0, 40.0), ["feed", "effects"]) == (147.0, 5.0)
    assert totals(text(100.0, 40.0), ["feed"]) == (140.0, 3.0)


def test_scrape_rate_is_counter_growth_over_time_summed_over_gateways():
    clock, pages = Clock(), {}
    source = ScrapeSource(["a", "b"], ["feed"], clock, fetch=lambda url, _: pages[url])
    pages.update(a=text(100.0), b=text(10.0))
    assert source.observe(1) is None  # no rate from one read
    clock.now = 2.0
    pages.update(a=text(150.0, 30.0), b=text(30.0))
    observation = source.observe(3)
    assert observation.arrival_rate == pytest.approx((80 + 20) / 2.0)
    assert observation.inflight == 6.0  # 3 per gateway
    assert observation.ready == 3


def test_a_failed_or_restarted_source_gives_no_observation():
    clock, pages = Clock(), {"a": text(100.0)}

    def fetch(url, timeout):
        if pages[url] is None:
            raise OSError("connection refused")
        return pages[url]

    source = ScrapeSource(["a"], ["feed"], clock, fetch=fetch)
    source.observe(1)
    clock.now = 2.0
    pages["a"] = None
    assert source.observe(1) is None
    assert source.failures == 1
    clock.now = 4.0
    pages["a"] = text(5.0)  # the counter went back: a restart, not negative demand
    assert source.observe(1) is None
    clock.now = 6.0
    pages["a"] = text(25.0)
    assert source.observe(1).arrival_rate == pytest.approx(10.0)


def answer(value: str | None, status: str = "success") -> str:
    result = [] if value is None else [{"metric": {}, "value": [1700000000.0, value]}]
    return json.dumps({"status": status, "data": {"resultType": "vector", "result": result}})


def test_prometheus_source_queries_rate_and_inflight_for_the_routes():
    asked = []

    def fetch(url, timeout):
        asked.append(url)
        return answer("42.5") if "rate" in url else answer("7")

    source = PrometheusSource("http://prom:9090/", ["feed", "effects"], fetch=fetch)
    observation = source.observe(2)
    assert (observation.arrival_rate, observation.inflight, observation.ready) == (42.5, 7.0, 2)
    assert source.rate_query == (
        'sum(rate(tenfold_gateway_arrivals_total{route=~"effects|feed"}[10s]))'
    )
    assert asked[0].startswith("http://prom:9090/api/v1/query?query=sum%28rate%28")


def test_prometheus_without_series_or_with_an_error_gives_no_observation():
    source = PrometheusSource("http://prom", ["feed"], fetch=lambda url, _: answer(None))
    assert source.observe(1) is None
    source = PrometheusSource("http://prom", ["feed"], fetch=lambda url, _: answer("1", "error"))
    assert source.observe(1) is None
    assert source.failures == 1
