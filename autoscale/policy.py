"""The scaling policy: a pure function of what was observed, the policy's own state and
the time, in the manner of Knative's KPA.

- Demand is the arrival rate per pool counted before any shedding (a 429 is still
  demand), with in-flight requests as a second signal; CPU and concurrency saturate
  under overload and would hide a 10x surge.
- Stable mode: desired = demand averaged over the stable window (60 s) / the per-pod
  target. Panic mode is entered when demand over the panic window (6 s) reaches
  ``panic_threshold`` x what the ready pods can serve; in panic the count goes at once
  to what the newest demand needs (up to ``max_scale_up_rate`` x per decision) and
  never down; panic ends once the stable window has passed without the condition.
- Scale-down is stabilised (the highest recommendation of the last
  ``scale_down_delay_s`` wins) and rate-limited (at most ``1/max_scale_down_rate`` of
  the pods go per decision).
- A missing observation (the metric source failed) holds the count: never scale on
  no data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from pydantic import BaseModel, ConfigDict, Field, model_validator


class PolicySettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    target_rps_per_pod: float = Field(gt=0, description="requests/s one pod serves well")
    utilization: float = Field(
        0.8, gt=0, le=1, description="share of a pod's target to plan for (headroom)"
    )
    inflight_per_pod: float | None = Field(
        None, gt=0, description="in-flight requests one pod takes (None: rate only)"
    )
    min_replicas: int = Field(1, ge=0, description="fewest pods")
    max_replicas: int = Field(20, ge=1, description="most pods")
    stable_window_s: float = Field(60.0, gt=0, description="averaging window, stable mode")
    panic_window_s: float = Field(6.0, gt=0, description="averaging window, panic check")
    panic_threshold: float = Field(
        2.0, gt=1, description="panic when demand reaches this x the ready capacity"
    )
    max_scale_up_rate: float = Field(
        10.0, ge=1, description="pods may grow to this x the ready count per decision"
    )
    max_scale_down_rate: float = Field(
        2.0, ge=1, description="pods may shrink to 1/this of the ready count per decision"
    )
    scale_down_delay_s: float = Field(
        300.0, ge=0, description="scale-down follows the highest wish of this window"
    )
    tick_s: float = Field(2.0, gt=0, description="seconds between decisions")

    @model_validator(mode="after")
    def _bounds(self) -> PolicySettings:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) > max_replicas ({self.max_replicas})"
            )
        if self.panic_window_s > self.stable_window_s:
            raise ValueError("panic_window_s must not exceed stable_window_s")
        return self


@dataclass(frozen=True)
class Observation:
    #: requests arriving per second over the last interval, shed ones included
    arrival_rate: float
    #: requests in flight now
    inflight: float
    #: pods ready and in the pool now
    ready: int


@dataclass(frozen=True)
class Decision:
    desired: int
    mode: str  # "stable" | "panic" | "hold"
    #: demand the decision planned for (requests/s)
    demand: float
    reason: str


@dataclass(frozen=True)
class PolicyState:
    #: (time, arrival rate, in-flight) samples within the stable window
    samples: tuple[tuple[float, float, float], ...] = ()
    #: (time, recommendation) within the scale-down delay
    wishes: tuple[tuple[float, int], ...] = ()
    desired: int | None = None
    panic_until: float | None = None
    last: Decision | None = field(default=None, compare=False)


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


def decide(
    observation: Observation | None, state: PolicyState, now: float, settings: PolicySettings
) -> tuple[int, PolicyState]:
    """The replica count to run now, and the policy's next state."""
    s = settings
    if observation is None:
        held = state.desired if state.desired is not None else s.min_replicas
        decision = Decision(held, "hold", 0.0, "no observation: holding the count")
        return held, replace(state, desired=held, last=decision)

    kept = (x for x in state.samples if now - x[0] < s.stable_window_s)
    samples = (*kept, (now, observation.arrival_rate, observation.inflight))
    panic_samples = [x for x in samples if now - x[0] < s.panic_window_s]
    per_pod = s.target_rps_per_pod * s.utilization

    def need(rate: float, inflight: float) -> int:
        pods = rate / per_pod
        if s.inflight_per_pod:
            pods = max(pods, inflight / s.inflight_per_pod)
        return math.ceil(pods - 1e-9)

    stable_rate = _mean(x[1] for x in samples)
    stable_need = need(stable_rate, _mean(x[2] for x in samples))
    panic_rate = _mean(x[1] for x in panic_samples)
    panic_need = need(panic_rate, _mean(x[2] for x in panic_samples))
    ready = max(observation.ready, 0)
    current = state.desired if state.desired is not None else max(ready, s.min_replicas)

    panicking = state.panic_until is not None and now < state.panic_until
    if panic_need >= s.panic_threshold * max(ready, 1) and panic_need > ready:
        panicking = True
        panic_until = now + s.stable_window_s
    else:
        panic_until = state.panic_until if panicking else None

    if panicking:
        # at once to what the newest demand needs; never down while panicking
        newest = need(observation.arrival_rate, observation.inflight)
        wish = max(newest, panic_need, current)
        mode, demand = "panic", max(observation.arrival_rate, panic_rate)
    else:
        wish = stable_need
        mode, demand = "stable", stable_rate

    up_limit = math.ceil(s.max_scale_up_rate * max(ready, 1))
    wish = min(wish, up_limit)
    wish = max(s.min_replicas, min(s.max_replicas, wish))

    wishes = tuple(w for w in state.wishes if now - w[0] < s.scale_down_delay_s)
    wishes += ((now, wish),)
    desired = wish
    if wish < current:
        # scale down only to the highest wish of the delay window, and by a bounded step
        desired = max(w[1] for w in wishes)
        desired = max(desired, math.floor(current / s.max_scale_down_rate), s.min_replicas)
        desired = min(desired, current)
    reason = (
        f"{mode}: demand {demand:.1f}/s, {per_pod:.1f}/s per pod -> wish {wish}, "
        f"ready {ready}, desired {desired}"
    )
    decision = Decision(desired, mode, demand, reason)
    new_state = PolicyState(samples, wishes, desired, panic_until, decision)
    return desired, new_state
