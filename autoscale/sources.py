"""Where demand is read: the gateways' own /metrics (the embedded default, no server
needed) or the Prometheus HTTP API. Either gives an ``Observation`` per decision, or
None when it cannot (then the policy holds the count; the failure is counted and
logged, never read as zero demand)."""

from __future__ import annotations

import json
import logging
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Sequence

from autoscale.policy import Observation
from autoscale.traffic import INFLIGHT, counts

log = logging.getLogger("tenfold.autoscale")
REQUESTS = "tenfold_gateway_arrivals"


def fetch_text(url: str, timeout: float) -> str:
    """The body of ``url`` (a metrics endpoint or an API on loopback or configured)."""
    with urllib.request.urlopen(url, timeout=timeout) as answer:  # loopback or configured
        return answer.read().decode()


def totals(text: str, routes: Iterable[str]) -> tuple[float, float]:
    """(requests arrived so far, in flight now) over ``routes`` in one exposition text.
    Arrivals are counted when a request comes in, before any shedding: a request then
    refused with 429 or 503 is still demand, and a backlog finishing late is not new
    demand."""
    read = counts([text], routes)
    return read.arrivals, read.inflight


class ScrapeSource:
    """Arrival rate = the growth of the gateways' request counters between two reads."""

    def __init__(
        self,
        urls: Sequence[str],
        routes: Iterable[str],
        clock: Callable[[], float],
        fetch: Callable[[str, float], str] = fetch_text,
        timeout_s: float = 1.0,
    ) -> None:
        self.urls = list(urls)
        self.routes = list(routes)
        self.clock = clock
        self.fetch = fetch
        self.timeout_s = timeout_s
        self._last: tuple[float, float] | None = None
        self.failures = 0

    def observe(self, ready: int) -> Observation | None:
        now = self.clock()
        answered = inflight = 0.0
        try:
            for url in self.urls:
                a, i = totals(self.fetch(url, self.timeout_s), self.routes)
                answered, inflight = answered + a, inflight + i
        except (OSError, ValueError) as exc:
            self.failures += 1
            log.warning("metric source: cannot read %s: %s (holding)", self.urls, exc)
            return None
        last, self._last = self._last, (now, answered)
        if last is None or now <= last[0] or answered < last[1]:
            return None  # the first read, or a gateway restarted: no rate yet
        rate = (answered - last[1]) / (now - last[0])
        return Observation(rate, inflight, ready)


class PrometheusSource:
    """PromQL over the Prometheus HTTP API: ``sum(rate(...[window]))`` and the in-flight
    gauge, for the given routes."""

    def __init__(
        self,
        base_url: str,
        routes: Iterable[str],
        window: str = "10s",
        fetch: Callable[[str, float], str] = fetch_text,
        timeout_s: float = 2.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        selector = "|".join(sorted(routes))
        self.rate_query = f'sum(rate({REQUESTS}_total{{route=~"{selector}"}}[{window}]))'
        self.inflight_query = f'sum({INFLIGHT}{{route=~"{selector}"}})'
        self.fetch = fetch
        self.timeout_s = timeout_s
        self.failures = 0

    def query(self, promql: str) -> float | None:
        url = f"{self.base_url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        doc = json.loads(self.fetch(url, self.timeout_s))
        if doc.get("status") != "success":
            raise ValueError(f"Prometheus answered {doc.get('status')}: {doc.get('error')}")
        result = doc["data"]["result"]
        if not result:
            return None  # no series (yet): unknown, not zero
        return float(result[0]["value"][1])

    def observe(self, ready: int) -> Observation | None:
        try:
            rate = self.query(self.rate_query)
            inflight = self.query(self.inflight_query)
        except (OSError, ValueError, KeyError) as exc:
            self.failures += 1
            log.warning("metric source: Prometheus query failed: %s (holding)", exc)
            return None
        if rate is None:
            self.failures += 1
            log.warning("metric source: Prometheus has no request series yet (holding)")
            return None
        return Observation(rate, inflight or 0.0, ready)
