"""Adaptive concurrency limits: Envoy's gradient controller, one per route.

A fixed cap on requests in flight is either too high (overload queues at the pod until
every request misses its deadline: goodput collapses) or too low (capacity unused).
The controller measures instead:

1. **The floor**: the route's latency with almost no queue (``min_rtt``). The limit is
   pinned to its minimum while ``min_rtt_samples`` requests complete; their
   ``percentile`` latency is the floor. Re-measured every ``min_rtt_interval_s``
   (jittered, so workers do not measure together), and early when the limit has sat at
   its minimum for ``min_windows_to_remeasure`` windows (the floor itself has risen).
2. **The gradient**: every ``window_s`` the ``percentile`` latency of the requests
   that finished in the window is compared with the floor plus a ``buffer``::

       allowance = max(min_rtt * (1 + buffer), latency_target)
       gradient = clamp(allowance / sample_rtt, 0.5, 2.0)
       limit = clamp(limit * gradient + sqrt(limit), min_limit, max_limit)

   Latency above the allowance shrinks the limit (down to half per window); latency
   near the floor grows it. ``latency_target_ms`` (off by default) is a latency the
   route's callers accept whatever the floor: on shared cores an image's latency
   swings to several times its floor in waves well inside any deadline, and a limit
   tied to the floor alone shed 429s through them with CPU to spare. The ``sqrt``
   headroom keeps a little queue so the pod's batches stay full (``headroom: none``
   drops it).

The minimum is ``min_limit`` per ready endpoint behind the route (``endpoints``, set
by the admission before each request): "almost no queue" is a few requests on each
pod, not on the route. Pinned to ``min_limit`` for the whole route while eight new pods
were taking a surge, the limit refused 20 requests a second that the pods had room
for (a drill, docs/benchmarks.md); with one endpoint nothing changes.

The first measurement is at start: until ``min_rtt_samples`` requests have finished, a
route admits ``min_limit`` at a time. (Measured unpinned, under a load that arrives
with the gateway, the floor came out 5x too high and the limit never bound.)

A request over the limit is refused at once (429 + Retry-After), with no queue: under
overload a queue only adds its wait to every answer. It is refused in microseconds,
before any work is spent on it, instead of becoming a 504 after its whole deadline.

Pure logic: the clock is passed in and the jitter comes from a seeded
``random.Random``. ``gateway.admission.AdaptiveAdmission`` applies it; ``gateway.core``
owns one per route.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator


class GradientSettings(BaseModel):
    """The controller's settings (``GatewaySettings.concurrency``), per route."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = Field(True, description="adaptive limits per route (off: max_inflight only)")
    min_limit: int = Field(3, ge=1, description="the limit's floor, and while measuring min_rtt")
    max_limit: int = Field(256, ge=1, description="the limit's ceiling")
    initial_limit: int = Field(16, ge=1, description="the limit before the first window")
    window_s: float = Field(0.1, gt=0, description="how often the limit is updated")
    min_window_samples: int = Field(
        5, ge=1, description="windows with fewer finished requests keep the limit"
    )
    percentile: float = Field(50, gt=0, le=100, description="latency percentile compared")
    buffer: float = Field(1.0, ge=0, description="latency allowed above min_rtt (1 = +100%)")
    latency_target_ms: float | None = Field(
        None,
        gt=0,
        description="latency that never shrinks the limit, whatever the floor: the "
        "allowance is max(min_rtt x (1 + buffer), this); None: the floor's alone",
    )
    headroom: Literal["sqrt", "none"] = Field(
        "sqrt",
        description="added to the limit each window: sqrt(limit) (Envoy's; a little queue "
        "keeps batches full) or none (on pods that run one request at a time the limit "
        "settles near 1 + buffer, so admitted latency stays near the allowance)",
    )
    min_rtt_interval_s: float = Field(60, gt=0, description="how often min_rtt is re-measured")
    min_rtt_samples: int = Field(25, ge=1, description="requests measured for min_rtt")
    jitter: float = Field(0.15, ge=0, lt=1, description="random share of the interval")
    min_windows_to_remeasure: int = Field(
        5, ge=1, description="windows at min_limit that trigger an early re-measure"
    )

    @model_validator(mode="after")
    def _ordered(self) -> GradientSettings:
        if not self.min_limit <= self.initial_limit <= self.max_limit:
            raise ValueError("concurrency: need min_limit <= initial_limit <= max_limit")
        return self


@dataclass
class GradientLimit:
    """The gradient controller of one route: ``limit`` is the cap the route's
    admission applies now; ``observe`` feeds it the latency of each finished request."""

    settings: GradientSettings
    now: float
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    limit_f: float = 0.0
    min_rtt_s: float | None = None
    #: measuring the floor: the limit is pinned to ``min_limit`` meanwhile
    measuring: bool = True
    #: bumped when a phase starts: requests admitted in an earlier phase are not sampled
    epoch: int = 0
    _samples: list[float] = field(default_factory=list)
    _window_start: float = 0.0
    _next_measure: float = 0.0
    _at_min: int = 0
    #: ready endpoints behind the route: the minimum is ``min_limit`` for each
    endpoints: int = 1

    def __post_init__(self) -> None:
        self.limit_f = float(self.settings.initial_limit)
        self._window_start = self.now

    @property
    def minimum(self) -> int:
        return self.settings.min_limit * max(1, self.endpoints)

    @property
    def limit(self) -> int:
        if self.measuring:
            return self.minimum
        return max(self.minimum, int(self.limit_f))

    @property
    def allowance_s(self) -> float:
        """The latency a window may have without shrinking the limit (needs the floor)."""
        s = self.settings
        assert self.min_rtt_s is not None
        allowed = self.min_rtt_s * (1.0 + s.buffer)
        if s.latency_target_ms is not None:
            allowed = max(allowed, s.latency_target_ms / 1000.0)
        return allowed

    def observe(self, epoch: int, latency_s: float | None, now: float) -> None:
        """A request admitted in ``epoch`` finished; ``latency_s`` is its service time,
        or None when it says nothing about the route's latency (a client error)."""
        if latency_s is not None and epoch == self.epoch:
            self._samples.append(latency_s)
        self.advance(now)

    def advance(self, now: float) -> None:
        """Move to the next phase or window when it is due."""
        s = self.settings
        if self.measuring:
            if len(self._samples) >= s.min_rtt_samples:
                self.min_rtt_s = float(np.percentile(self._samples, s.percentile))
                self._start_sampling(now)
            return
        if now >= self._next_measure:
            self._start_measuring()
            return
        if now - self._window_start >= s.window_s:
            if len(self._samples) >= s.min_window_samples:
                self._update(float(np.percentile(self._samples, s.percentile)))
                self._samples.clear()
            self._window_start = now

    # -- phases -------------------------------------------------------------------------
    def _update(self, sample_rtt: float) -> None:
        s = self.settings
        gradient = min(2.0, max(0.5, self.allowance_s / max(sample_rtt, 1e-9)))
        limit = self.limit_f * gradient
        if s.headroom == "sqrt":
            limit += math.sqrt(limit)
        self.limit_f = min(float(s.max_limit), max(float(self.minimum), limit))
        self._at_min = self._at_min + 1 if int(self.limit_f) <= self.minimum else 0
        if self._at_min >= s.min_windows_to_remeasure:
            self._start_measuring()

    def _start_measuring(self) -> None:
        self.measuring = True
        self._at_min = 0
        self._samples.clear()
        self.epoch += 1

    def _start_sampling(self, now: float) -> None:
        s = self.settings
        self.measuring = False
        self._samples.clear()
        self.epoch += 1
        self._window_start = now
        jitter = 1.0 + self.rng.uniform(-s.jitter, s.jitter)
        self._next_measure = now + s.min_rtt_interval_s * jitter
