"""A pool's traffic from the gateway's own metrics (the exposition text the gateway's
``GatewayMetrics`` writes): rates by outcome, p99 as ``histogram_quantile`` estimates
it, and the live table of ``tenfold up --autoscale`` that shows them."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from prometheus_client import generate_latest
from rich.console import Console

from autoscale.local import ProviderStatus
from autoscale.policy import Decision, PolicyState
from autoscale.traffic import Counts, Traffic, counts, quantile, traffic
from gateway.metrics import GatewayMetrics
from tenfold.live import TrafficWatch, pods_table


def exposition(answers: dict[tuple[str, str], int], latencies: dict[str, list[float]]) -> str:
    metrics = GatewayMetrics()
    for (route, code), n in answers.items():
        metrics.arrivals.labels(route).inc(n)
        metrics.requests.labels(route, code, "").inc(n)
    for route, seconds in latencies.items():
        for s in seconds:
            metrics.latency.labels(route).observe(s)
    return generate_latest(metrics.registry).decode()


def test_answers_are_counted_by_outcome_over_the_pools_routes_and_gateways():
    one = exposition({("feed", "200"): 7, ("feed", "429"): 2, ("infer", "503"): 1}, {})
    two = exposition({("feed", "504"): 3, ("feed", "499"): 4, ("effects", "200"): 50}, {})
    got = counts([one, two], ("feed", "infer"))
    # arrivals count every request; 499 (the client left) is neither shed nor an error
    assert (got.arrivals, got.ok, got.shed, got.errors) == (17, 7, 3, 3)
    assert counts([one, two], ("effects",)).ok == 50


def test_quantile_interpolates_within_its_bucket_as_histogram_quantile_does():
    buckets = ((0.1, 50.0), (0.2, 90.0), (0.5, 100.0), (float("inf"), 100.0))
    assert quantile(0.99, buckets) == pytest.approx(0.2 + 0.3 * 9 / 10)
    assert quantile(0.5, buckets) == pytest.approx(0.1)
    assert quantile(0.25, buckets) == pytest.approx(0.05)  # the first bucket starts at 0
    # in the +Inf bucket: the highest finite bound
    assert quantile(0.99, ((0.1, 10.0), (float("inf"), 20.0))) == pytest.approx(0.1)
    assert quantile(0.99, ((0.1, 0.0), (float("inf"), 0.0))) is None


def test_rates_and_p99_are_of_the_interval_not_of_all_time():
    before = counts(
        [exposition({("effects", "200"): 100}, {"effects": [0.004] * 100})], ["effects"]
    )
    later = exposition(
        {("effects", "200"): 100 + 18, ("effects", "503"): 2},
        {"effects": [0.004] * 100 + [0.3] * 20},  # the 20 of the interval are slow
    )
    flow = traffic(before, counts([later], ["effects"]), 2.0)
    assert flow.arrivals_per_s == pytest.approx(10.0)
    assert (flow.ok_per_s, flow.shed_per_s, flow.errors_per_s) == (9.0, 1.0, 0.0)
    assert 200 < flow.p99_ms <= 500  # the (0.2, 0.5] bucket, not the earlier 4 ms ones


def test_a_counter_that_went_back_or_no_time_gives_no_rate():
    high = Counts(arrivals=10, ok=10)
    assert traffic(high, Counts(arrivals=3, ok=3), 2.0) is None  # a gateway restarted
    assert traffic(high, high, 0.0) is None
    assert traffic(high, high, 2.0).p99_ms is None  # nothing answered: no latency


def test_the_watch_gives_rates_from_its_second_read_and_holds_on_failure():
    texts = [
        exposition({("effects", "200"): 10}, {}),
        exposition({("effects", "200"): 30}, {}),
    ]
    now = [0.0]

    def fetch(url, timeout):
        if not texts:
            raise OSError("refused")
        return texts.pop(0)

    watch = TrafficWatch("http://gw/metrics", {"effects": ("effects",)}, lambda: now[0], fetch)
    assert watch.read() == {"effects": None}
    now[0] = 4.0
    assert watch.read()["effects"].ok_per_s == pytest.approx(5.0)
    assert watch.read() == {"effects": None}  # unreadable: no figure, no error


@dataclass
class FakeProvider:
    ready: ProviderStatus

    def status(self) -> ProviderStatus:
        return self.ready


@dataclass
class FakeAutoscaler:
    state: PolicyState


@dataclass
class FakePools:
    providers: dict
    autoscalers: dict


def test_the_live_table_shows_each_pools_traffic_pods_and_last_decision():
    panic = Decision(8, "panic", 23.4, "panic: demand 23.4/s -> desired 8")
    pools = FakePools(
        {
            "feed": FakeProvider(ProviderStatus(1, 0, 0, 0)),
            "effects": FakeProvider(ProviderStatus(1, 7, 0, 0)),
        },
        {
            "feed": FakeAutoscaler(PolicyState()),
            "effects": FakeAutoscaler(PolicyState(desired=8, last=panic)),
        },
    )
    flows = {"effects": Traffic(23.4, 3.5, 19.9, 0.0, 612.0), "feed": None}
    console = Console(record=True, width=200)
    console.print(pods_table(pools, flows))
    lines = console.export_text().splitlines()
    effects = next(line for line in lines if "effects" in line).split()
    assert effects[:11] == ["│", "effects", "│", "23.4", "│", "3.5", "│", "19.9", "│", "0.0", "│"]
    assert effects[11:19] == ["612", "│", "8", "│", "1", "│", "7", "│"]
    assert "panic: demand 23.4/s -> desired 8" in " ".join(effects)
    feed = next(line for line in lines if "feed" in line).split()
    assert feed[3] == "-"  # no rate yet
