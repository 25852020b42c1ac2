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


def new_histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, DIGITS)


def is_ok(status: str) -> bool:
    """HTTP 2xx or gRPC OK."""
    return status == "OK" or (len(status) == 3 and status.startswith("2") and status.isdigit())


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

    def record(self, status: str, latency_s: float) -> None:
        self.statuses[status] += 1
        self.histogram.record_value(min(HIGHEST_US, max(LOWEST_US, int(latency_s * 1e6))))

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

    def percentile_ms(self, p: float) -> float:
        return percentile_ms(self.histogram, p)

    def max_ms(self) -> float:
        return max_ms(self.histogram)

    def to_wire(self) -> dict:
        return {"histogram": encode(self.histogram), "statuses": dict(self.statuses)}

    @classmethod
    def from_wire(cls, data: dict) -> Interval:
        return cls(decode(data["histogram"]), Counter(data["statuses"]))

    def latency_summary(self) -> dict[str, float]:
        out = {f"p{p:g}_ms": round(self.percentile_ms(p), 3) for p in PERCENTILES}
        out["max_ms"] = round(self.max_ms(), 3)
        out["mean_ms"] = round(self.histogram.get_mean_value() / 1000, 3)
        return out
