"""A simulator of the Kubernetes HorizontalPodAutoscaler (autoscaling/v2), to prove how
fast a given HPA reaches 10x: the documented algorithm, step by step, with the clock
in the caller's hands.

Each sync period (15 s) the controller reads the metric (here: requests per second per
pod, an ``AverageValue`` target, as ``metric_lag_s`` old), proposes
``ceil(demand / target)`` unless the usage ratio is within the tolerance (0.1) of 1,
stabilises the proposal (scale-up: the lowest recommendation of its window; scale-down:
the highest), then limits the change by the ``behavior`` policies (Pods / Percent per
``periodSeconds``, measured from the replicas at the start of the period;
``selectPolicy`` Max, Min or Disabled), and clamps to min/max. A replica added at a
sync becomes ready ``pod_start_s`` later. This follows
kubernetes/pkg/controller/podautoscaler (``normalizeDesiredReplicasWithBehaviors``,
``calculateScaleUpLimitWithScalingRules``); where a custom metric's missing pods are
concerned (pods still starting), their usage is taken as zero on scale-up, which makes
the proposal ``ceil(demand / target)`` as above.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_UP = {
    "stabilizationWindowSeconds": 0,
    "selectPolicy": "Max",
    "policies": [
        {"type": "Percent", "value": 100, "periodSeconds": 15},
        {"type": "Pods", "value": 4, "periodSeconds": 15},
    ],
}
DEFAULT_DOWN = {
    "stabilizationWindowSeconds": 300,
    "selectPolicy": "Max",
    "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}],
}


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    type: str = Field(pattern="^(Pods|Percent)$")
    value: int = Field(gt=0)
    period_s: int = Field(alias="periodSeconds", gt=0, le=1800)


class Rules(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    window_s: int = Field(0, alias="stabilizationWindowSeconds", ge=0, le=3600)
    select: str = Field("Max", alias="selectPolicy", pattern="^(Max|Min|Disabled)$")
    policies: list[Policy] = Field(default_factory=list)


@dataclass(frozen=True)
class Hpa:
    min_replicas: int
    max_replicas: int
    target_per_pod: float
    up: Rules
    down: Rules
    tolerance: float = 0.1
    sync_s: float = 15.0


class HpaError(ValueError):
    """The HPA document is not one the simulator understands; the message names the field."""


def quantity(value) -> float:
    """A Kubernetes quantity (``50``, ``500m``, ``1.5k``) as a number."""
    text = str(value).strip()
    scale = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9}
    if text and text[-1] in scale:
        return float(text[:-1]) * scale[text[-1]]
    return float(text)


def parse_hpa(doc: Mapping) -> Hpa:
    """An ``autoscaling/v2`` HorizontalPodAutoscaler with one Pods or Object/External
    metric whose target is an ``averageValue`` (requests/s per pod)."""
    if doc.get("kind") != "HorizontalPodAutoscaler":
        raise HpaError(f"kind: expected HorizontalPodAutoscaler, not {doc.get('kind')!r}")
    spec = doc.get("spec") or {}
    metrics = spec.get("metrics") or []
    if len(metrics) != 1:
        raise HpaError(f"spec.metrics: expected one metric, found {len(metrics)}")
    metric = metrics[0]
    body = (
        metric.get(
            {"Pods": "pods", "Object": "object", "External": "external"}.get(
                metric.get("type"), "?"
            )
        )
        or {}
    )
    target = body.get("target") or {}
    if "averageValue" not in target:
        raise HpaError("spec.metrics[0]: the target must be an averageValue (per pod)")
    behavior = spec.get("behavior") or {}
    try:
        up = Rules.model_validate({**DEFAULT_UP, **(behavior.get("scaleUp") or {})})
        down = Rules.model_validate({**DEFAULT_DOWN, **(behavior.get("scaleDown") or {})})
    except ValueError as exc:
        raise HpaError(f"spec.behavior: {exc}") from None
    minimum, maximum = int(spec.get("minReplicas", 1)), int(spec.get("maxReplicas", 0))
    if not 1 <= minimum <= maximum:
        raise HpaError(
            f"spec.minReplicas ({minimum}) / maxReplicas ({maximum}): need 1 <= min <= max"
        )
    per_pod = quantity(target["averageValue"])
    if per_pod <= 0:
        raise HpaError("spec.metrics[0].target.averageValue must be positive")
    return Hpa(minimum, maximum, per_pod, up, down)


@dataclass
class Controller:
    """The HPA's state between syncs: recommendations and scale events."""

    hpa: Hpa
    replicas: int
    recommendations: list[tuple[float, int]] = field(default_factory=list)
    up_events: list[tuple[float, int]] = field(default_factory=list)
    down_events: list[tuple[float, int]] = field(default_factory=list)

    def sync(self, now: float, demand: float) -> int:
        hpa, current = self.hpa, self.replicas
        ratio = demand / (hpa.target_per_pod * max(current, 1))
        proposal = (
            current if abs(ratio - 1) <= hpa.tolerance else math.ceil(demand / hpa.target_per_pod)
        )
        proposal = max(proposal, 0)
        stabilised = self._stabilise(now, proposal, current)
        desired = self._limit(now, stabilised, current)
        desired = max(hpa.min_replicas, min(hpa.max_replicas, desired))
        if desired > current:
            self.up_events.append((now, desired - current))
        elif desired < current:
            self.down_events.append((now, current - desired))
        self.replicas = desired
        return desired

    def _stabilise(self, now: float, proposal: int, current: int) -> int:
        up_cut, down_cut = now - self.hpa.up.window_s, now - self.hpa.down.window_s
        up_rec = down_rec = proposal
        for when, value in self.recommendations:
            if when > up_cut:
                up_rec = min(up_rec, value)
            if when > down_cut:
                down_rec = max(down_rec, value)
        self.recommendations = [r for r in self.recommendations if r[0] > min(up_cut, down_cut)] + [
            (now, proposal)
        ]
        return min(max(current, up_rec), down_rec)

    @staticmethod
    def _changed(events: list[tuple[float, int]], now: float, period: int) -> int:
        return sum(n for when, n in events if when > now - period)

    def _limit(self, now: float, desired: int, current: int) -> int:
        """``desired`` bounded by the behaviour's policies for its direction."""
        if desired == current:
            return current
        up = desired > current
        rules = self.hpa.up if up else self.hpa.down
        if rules.select == "Disabled" or not rules.policies:
            return current
        limits = [self._policy_limit(p, now, current, up) for p in rules.policies]
        # Max selects the policy that allows the most change, Min the least
        most_change = max if up else min
        least_change = min if up else max
        limit = (most_change if rules.select == "Max" else least_change)(limits)
        if up:
            return min(desired, max(limit, current))
        return max(desired, min(limit, current))

    def _policy_limit(self, policy: Policy, now: float, current: int, up: bool) -> int:
        # the replicas when the policy's period began: now, less what changed since
        start = (
            current
            - self._changed(self.up_events, now, policy.period_s)
            + self._changed(self.down_events, now, policy.period_s)
        )
        if policy.type == "Pods":
            return start + policy.value if up else start - policy.value
        if up:
            return math.ceil(start * (1 + policy.value / 100))
        return int(start * (1 - policy.value / 100))


@dataclass(frozen=True)
class Step:
    t: float
    demand: float
    desired: int
    ready: int


def simulate(
    hpa: Hpa,
    demand: Callable[[float], float],
    duration_s: float,
    pod_start_s: float = 20.0,
    metric_lag_s: float = 15.0,
    start_replicas: int | None = None,
    resolution_s: float = 1.0,
) -> list[Step]:
    """The timeline every ``resolution_s``: demand now, desired and ready replicas. The
    controller syncs every ``hpa.sync_s`` from t=0, seeing demand ``metric_lag_s`` old."""
    replicas = start_replicas if start_replicas is not None else hpa.min_replicas
    controller = Controller(hpa, replicas)
    arrivals: list[tuple[float, int]] = [(-math.inf, replicas)]  # (ready at, pods)
    out: list[Step] = []
    next_sync, t = 0.0, 0.0
    while t <= duration_s + 1e-9:
        if t >= next_sync - 1e-9:
            before = controller.replicas
            desired = controller.sync(t, demand(max(0.0, t - metric_lag_s)))
            if desired > before:
                arrivals.append((t + pod_start_s, desired - before))
            elif desired < before:
                _remove_newest(arrivals, before - desired)
            next_sync += hpa.sync_s
        ready = sum(n for when, n in arrivals if when <= t + 1e-9)
        out.append(Step(round(t, 6), demand(t), controller.replicas, ready))
        t += resolution_s
    return out


def _remove_newest(arrivals: list[tuple[float, int]], count: int) -> None:
    while count > 0 and arrivals:
        when, n = arrivals.pop()
        if n > count:
            arrivals.append((when, n - count))
            return
        count -= n


def time_to_ready(steps: list[Step], step_at: float, replicas: int) -> float | None:
    """Seconds from ``step_at`` until at least ``replicas`` pods are ready."""
    for step in steps:
        if step.t >= step_at and step.ready >= replicas:
            return step.t - step_at
    return None


def time_to_capacity(steps: list[Step], step_at: float, target_per_pod: float) -> float | None:
    """Seconds from ``step_at`` until the ready pods cover the demand."""
    for step in steps:
        if step.t >= step_at and step.ready * target_per_pod >= step.demand:
            return step.t - step_at
    return None
