"""One pool's autoscaler: every tick, observe demand, decide (the pure policy), and let
the provider converge on the decision. Sources, providers and the clock are passed in."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge

from autoscale.policy import Decision, Observation, PolicySettings, PolicyState, decide

log = logging.getLogger("tenfold.autoscale")


class Source(Protocol):
    def observe(self, ready: int) -> Observation | None: ...


class Provider(Protocol):
    def reconcile(self, desired: int): ...

    def status(self): ...


class AutoscaleMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.desired = Gauge(
            "tenfold_autoscale_desired_replicas", "Pods the policy wants.", ("pool",), registry=r
        )
        self.ready = Gauge(
            "tenfold_autoscale_ready_replicas", "Pods ready and in the pool.", ("pool",), registry=r
        )
        self.demand = Gauge(
            "tenfold_autoscale_demand_rps",
            "Arrival rate the last decision planned for (shed requests included).",
            ("pool",),
            registry=r,
        )
        self.decisions = Counter(
            "tenfold_autoscale_decisions", "Decisions, by mode.", ("pool", "mode"), registry=r
        )
        self.source_failures = Counter(
            "tenfold_autoscale_source_failures",
            "Decisions without an observation (the count was held).",
            ("pool",),
            registry=r,
        )


@dataclass
class Autoscaler:
    pool: str
    source: Source
    provider: Provider
    settings: PolicySettings
    clock: Callable[[], float]
    metrics: AutoscaleMetrics = field(default_factory=AutoscaleMetrics)
    state: PolicyState = field(default_factory=PolicyState)
    #: called with each decision (a live view, the drill's recorder)
    on_decision: Callable[[Decision, object], None] | None = None

    def tick(self) -> Decision:
        ready = self.provider.status().ready
        observation = self.source.observe(ready)
        desired, self.state = decide(observation, self.state, self.clock(), self.settings)
        status = self.provider.reconcile(desired)
        decision = self.state.last
        m = self.metrics
        m.desired.labels(self.pool).set(desired)
        m.ready.labels(self.pool).set(status.ready)
        m.decisions.labels(self.pool, decision.mode).inc()
        if observation is None:
            m.source_failures.labels(self.pool).inc()
        else:
            m.demand.labels(self.pool).set(decision.demand)
        if self.on_decision is not None:
            self.on_decision(decision, status)
        return decision
