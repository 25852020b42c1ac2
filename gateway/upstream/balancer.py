"""Endpoint choice and outlier ejection: pure logic, the clock passed in.

``EndpointState`` tracks one endpoint's in-flight count and failures; ``choose`` picks
one endpoint by the power of two choices on in-flight requests among the endpoints that
are not ejected (an ejected endpoint whose period is over gets one probe request: if it
succeeds it is back, if it fails it is ejected again for twice as long).

An endpoint's last load report (``inference.protocol.loadreport``: the wait of one more
row in its queue, and its pace per row) gives ``expected_wait``: the reported wait less
the time since, plus a row for each request sent to it since. ``choose(within_s=...)``
passes over endpoints that would not serve a request within its time left: the pod
would refuse it, after paying to receive it.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from inference.protocol.loadreport import LoadReport


@dataclass(frozen=True)
class EjectionPolicy:
    after_failures: int = 3
    base_s: float = 2.0
    max_s: float = 30.0


class EndpointState:
    def __init__(self, address: str, policy: EjectionPolicy) -> None:
        self.address = address
        self.policy = policy
        self.inflight = 0
        self.consecutive_failures = 0
        self.ejections = 0  # how many times in a row it was ejected (backoff exponent)
        self.ejected_until: float | None = None
        self.probing = False
        self.healthy = True  # set by the active health check
        #: the endpoint's last load report and when it came (None: none yet)
        self.report: tuple[LoadReport, float] | None = None
        self.sent_since_report = 0

    def reported(self, report: LoadReport | None, now: float) -> None:
        if report is not None:
            self.report = (report, now)
            self.sent_since_report = 0

    def expected_wait(self, now: float) -> float | None:
        """Seconds a request sent now would wait to be served (None: no report)."""
        if self.report is None:
            return None
        report, at = self.report
        queued = max(report.row_s, report.wait_s - (now - at))
        return queued + self.sent_since_report * report.row_s

    def serves_within(self, within_s: float | None, now: float) -> bool:
        wait = None if within_s is None else self.expected_wait(now)
        return wait is None or wait <= within_s

    def available(self, now: float) -> bool:
        if not self.healthy:
            return False
        if self.ejected_until is None:
            return True
        return now >= self.ejected_until and not self.probing

    def ejected(self, now: float) -> bool:
        return self.ejected_until is not None and now < self.ejected_until

    def started(self, now: float) -> None:
        self.inflight += 1
        self.sent_since_report += 1
        if self.ejected_until is not None and now >= self.ejected_until:
            self.probing = True

    def finished(self, ok: bool, now: float) -> bool:
        """Record an outcome; returns True when this outcome ejected the endpoint."""
        self.inflight -= 1
        was_probe, self.probing = self.probing, False
        if ok:
            self.consecutive_failures = 0
            self.ejections = 0
            self.ejected_until = None
            return False
        self.consecutive_failures += 1
        if was_probe or (
            self.ejected_until is None and self.consecutive_failures >= self.policy.after_failures
        ):
            period = min(self.policy.max_s, self.policy.base_s * 2**self.ejections)
            self.ejections += 1
            self.ejected_until = now + period
            return True
        return False


def choose(
    endpoints: Sequence[EndpointState],
    now: float,
    rng: random.Random,
    exclude: frozenset[str] = frozenset(),
    within_s: float | None = None,
) -> EndpointState | None:
    """Power of two choices on in-flight among available endpoints not in ``exclude``
    (and, given ``within_s``, expected to serve within it)."""
    candidates = [
        e
        for e in endpoints
        if e.address not in exclude and e.available(now) and e.serves_within(within_s, now)
    ]
    if not candidates:
        return None
    if len(candidates) == 1:
        return candidates[0]
    a, b = rng.sample(candidates, 2)
    return a if a.inflight <= b.inflight else b
