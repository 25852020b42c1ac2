"""What a load run records: latencies in HDR histograms (microseconds, 3 significant
digits), request outcomes by status, and the same per one-second interval so the
report can draw them over time. Recorders from several processes merge exactly:
histograms travel in HdrHistogram's compressed encoding and are added count by count.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from hdrh.histogram import HdrHistogram

LOWEST_US, HIGHEST_US, DIGITS = 1, 120_000_000, 3
PERCENTILES = (50, 90, 99, 99.9)
#: what a request that got no answer in time is recorded as
TIMEOUT = "timeout"
#: a request not sent because the client already had too many outstanding
CLIENT_OVERFLOW = "client_overflow"
#: answers that shed load (refused before work, with Retry-After): HTTP and gRPC
SHED = frozenset({"429", "503", "RESOURCE_EXHAUSTED", "UNAVAILABLE"})


def new_histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, DIGITS)


def is_ok(status: str) -> bool:
    """HTTP 2xx or gRPC OK."""
    return status == "OK" or (len(status) == 3 and status.startswith("2") and status.isdigit())


def outcome(status: str) -> str:
    """ok, shed (refused with Retry-After: overload answered early) or error."""
    if is_ok(status):
        return "ok"
    return "shed" if status in SHED else "error"


def percentile_ms(histogram: HdrHistogram, p: float) -> float:
    """The ``p``-th percentile of a histogram of microseconds, in ms (0 when empty)."""
    if histogram.get_total_count() == 0:
        return 0.0
    return histogram.get_value_at_percentile(p) / 1000


def max_ms(histogram: HdrHistogram) -> float:
    return histogram.get_max_value() / 1000


def encode(histogram: HdrHistogram) -> str:
    return histogram.encode().decode("ascii")


def decode(text: str) -> HdrHistogram:
    return HdrHistogram.decode(text.encode("ascii"))


@dataclass
class Interval:
    """Outcomes completed in one interval (or a whole run) of one or more processes."""

    histogram: HdrHistogram = field(default_factory=new_histogram)
    statuses: Counter = field(default_factory=Counter)
    #: the same latencies split by ``outcome`` (ok, shed, error)
    outcomes: dict[str, HdrHistogram] = field(default_factory=dict)

    def record(self, status: str, latency_s: float) -> None:
        self.statuses[status] += 1
        value = min(HIGHEST_US, max(LOWEST_US, int(latency_s * 1e6)))
        self.histogram.record_value(value)
        kind = outcome(status)
        if kind not in self.outcomes:
            self.outcomes[kind] = new_histogram()
        self.outcomes[kind].record_value(value)

    @property
    def completed(self) -> int:
        return sum(self.statuses.values())

    @property
    def ok(self) -> int:
        return sum(n for s, n in self.statuses.items() if is_ok(s))

    @property
    def errors(self) -> dict[str, int]:
        return {s: n for s, n in sorted(self.statuses.items()) if not is_ok(s)}

    def add(self, other: Interval) -> None:
        self.histogram.add(other.histogram)
        self.statuses.update(other.statuses)
        for kind, histogram in other.outcomes.items():
            if kind not in self.outcomes:
                self.outcomes[kind] = new_histogram()
            self.outcomes[kind].add(histogram)

    def percentile_ms(self, p: float) -> float:
        return percentile_ms(self.histogram, p)

    def max_ms(self) -> float:
        return max_ms(self.histogram)

    def to_wire(self) -> dict:
        return {
            "histogram": encode(self.histogram),
            "statuses": dict(self.statuses),
            "outcomes": {k: encode(h) for k, h in self.outcomes.items()},
        }

    @classmethod
    def from_wire(cls, data: dict) -> Interval:
        outcomes = {k: decode(h) for k, h in data.get("outcomes", {}).items()}
        return cls(decode(data["histogram"]), Counter(data["statuses"]), outcomes)

    def latency_summary(self) -> dict[str, float]:
        return summary(self.histogram)

    def outcome_summaries(self) -> dict[str, dict[str, float]]:
        """Latency of the ok answers, of the shed ones and of the errors, apart."""
        return {k: summary(h) for k, h in sorted(self.outcomes.items())}


def summary(histogram: HdrHistogram) -> dict[str, float]:
    out = {f"p{p:g}_ms": round(percentile_ms(histogram, p), 3) for p in PERCENTILES}
    out["max_ms"] = round(max_ms(histogram), 3)
    out["mean_ms"] = round(histogram.get_mean_value() / 1000, 3)
    return out
