"""A pool's traffic between two reads of the gateways' ``/metrics``: arrivals, OK, shed
(429/503) and other 5xx answers per second, and the p99 latency of the answers, over
the pool's routes. Pure (exposition text in, rates out); the live view of ``tenfold up
--autoscale`` shows it beside each pool's pods."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

ARRIVALS = "tenfold_gateway_arrivals_total"
INFLIGHT = "tenfold_gateway_inflight_requests"
ANSWERS = "tenfold_gateway_requests_total"
LATENCY = "tenfold_gateway_request_duration_seconds_bucket"
#: answers that refuse work for now (the client may retry): overload, not failure
SHED_CODES = frozenset({"429", "503"})


@dataclass(frozen=True)
class Counts:
    """Counters of one read, summed over the routes (and over workers and gateways)."""

    arrivals: float = 0.0
    ok: float = 0.0
    shed: float = 0.0
    errors: float = 0.0  # 5xx other than 503
    inflight: float = 0.0  # requests in flight at the read
    #: the latency histogram's cumulative buckets, (upper bound s, count), ascending
    buckets: tuple[tuple[float, float], ...] = ()


@dataclass(frozen=True)
class Traffic:
    arrivals_per_s: float
    ok_per_s: float
    shed_per_s: float
    errors_per_s: float
    #: None: no answer in the interval
    p99_ms: float | None


def counts(texts: Iterable[str], routes: Iterable[str]) -> Counts:
    """Sum the counters of ``routes`` over exposition ``texts`` (one per gateway)."""
    wanted = set(routes)
    arrivals = ok = shed = errors = inflight = 0.0
    buckets: dict[float, float] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.labels.get("route") not in wanted:
                    continue
                if sample.name == ARRIVALS:
                    arrivals += sample.value
                elif sample.name == INFLIGHT:
                    inflight += sample.value
                elif sample.name == ANSWERS:
                    code = sample.labels.get("code", "")
                    if code.startswith("2"):
                        ok += sample.value
                    elif code in SHED_CODES:
                        shed += sample.value
                    elif code.startswith("5"):
                        errors += sample.value
                elif sample.name == LATENCY:
                    le = float(sample.labels["le"])
                    buckets[le] = buckets.get(le, 0.0) + sample.value
    return Counts(arrivals, ok, shed, errors, inflight, tuple(sorted(buckets.items())))


def traffic(before: Counts, after: Counts, seconds: float) -> Traffic | None:
    """Rates between two reads ``seconds`` apart; None if a counter went back (a
    gateway restarted) or no time passed."""
    deltas = [
        after.arrivals - before.arrivals,
        after.ok - before.ok,
        after.shed - before.shed,
        after.errors - before.errors,
    ]
    if seconds <= 0 or min(deltas) < 0:
        return None
    previous = dict(before.buckets)
    grown = tuple((le, count - previous.get(le, 0.0)) for le, count in after.buckets)
    if any(count < 0 for _, count in grown):
        return None
    p99 = quantile(0.99, grown)
    rates = [d / seconds for d in deltas]
    return Traffic(*rates, p99_ms=None if p99 is None else p99 * 1000)


def quantile(q: float, buckets: tuple[tuple[float, float], ...]) -> float | None:
    """The ``q`` quantile of cumulative ``buckets`` as PromQL's ``histogram_quantile``
    estimates it: linear within the bucket that holds it (from 0 for the first); in the
    ``+Inf`` bucket, the highest finite bound. None for an empty histogram."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                count - lower_count
            )
        lower_bound, lower_count = bound, count
    return lower_bound
