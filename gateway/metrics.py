"""Prometheus metrics of the gateway: per route, pool and A/B arm.

With several workers, ``PROMETHEUS_MULTIPROC_DIR`` is set by the supervisor before the
workers start and ``/metrics`` of any worker aggregates all of them.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

_LATENCY = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "tenfold_gateway_requests",
            "Requests answered, by route, status class and A/B arm.",
            ("route", "code", "arm"),
            registry=r,
        )
        self.arrivals = Counter(
            "tenfold_gateway_arrivals",
            "Requests received, by route, counted on arrival before any shedding: the "
            "demand the autoscaler plans for.",
            ("route",),
            registry=r,
        )
        self.latency = Histogram(
            "tenfold_gateway_request_duration_seconds",
            "Time from request received to answer, by route.",
            ("route",),
            buckets=_LATENCY,
            registry=r,
        )
        self.inflight = Gauge(
            "tenfold_gateway_inflight_requests",
            "Requests being handled.",
            ("route",),
            registry=r,
            multiprocess_mode="livesum",
        )
        self.shed = Counter(
            "tenfold_gateway_shed",
            "Requests refused at the front door, by reason (concurrency: over the route's "
            "adaptive limit; admission: over max_inflight; rate_limit: the tenant's).",
            ("route", "reason"),
            registry=r,
        )
        self.concurrency_limit = Gauge(
            "tenfold_gateway_concurrency_limit",
            "The adaptive concurrency limit of a route (summed over workers).",
            ("route",),
            registry=r,
            multiprocess_mode="livesum",
        )
        self.concurrency_min_rtt = Gauge(
            "tenfold_gateway_concurrency_min_rtt_seconds",
            "The latency floor the route's adaptive limit compares with (last measured).",
            ("route",),
            registry=r,
            multiprocess_mode="max",
        )
        self.retries = Counter(
            "tenfold_gateway_upstream_retries",
            "Retries and hedges sent to another endpoint of a pool.",
            ("pool", "kind"),
            registry=r,
        )
        self.ejections = Counter(
            "tenfold_gateway_upstream_ejections",
            "Endpoints taken out of a pool after repeated failures.",
            ("pool",),
            registry=r,
        )
        self.full = Counter(
            "tenfold_gateway_upstream_full",
            "Requests shed because every endpoint of the pool reported a wait past the "
            "request's time left (no pod was sent them).",
            ("pool",),
            registry=r,
        )
        self.upstream_latency = Histogram(
            "tenfold_gateway_upstream_duration_seconds",
            "Time of one call to an inference pool, by pool and outcome.",
            ("pool", "outcome"),
            buckets=_LATENCY,
            registry=r,
        )

        self.state_reads = Counter(
            "tenfold_gateway_state_reads",
            "User-state reads by feeds, by outcome (hit, miss, degraded: the store did "
            "not answer in time and the feed was served stateless).",
            ("outcome",),
            registry=r,
        )
        self.events = Counter(
            "tenfold_gateway_events_accepted",
            "Feedback events stored in the event log, by type.",
            ("type",),
            registry=r,
        )

    def render(self) -> bytes:
        """The exposition text: all workers' metrics in multi-process mode."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            merged = CollectorRegistry()
            multiprocess.MultiProcessCollector(merged)
            return generate_latest(merged)
        return generate_latest(self.registry)
