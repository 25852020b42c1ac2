"""Live terminal views (rich) of the autoscaled pools: each pool's pods (desired,
ready, starting, stopping, the last decision) and, for ``tenfold up --autoscale``, its
traffic as the gateway counts it (arrivals, OK, shed and 5xx per second, p99), read
from the gateway's ``/metrics`` at each decision."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from autoscale.sources import fetch_text
from autoscale.traffic import Counts, Traffic, counts, traffic
from tenfold.scaling import POOL_ROUTES, ScaledPools

TRAFFIC_COLUMNS = ("arrivals/s", "OK/s", "shed/s", "5xx/s", "p99 ms")


class TrafficWatch:
    """Each pool's traffic between two reads of the gateway's metrics."""

    def __init__(
        self,
        metrics_url: str,
        pools: Mapping[str, tuple[str, ...]] = POOL_ROUTES,
        clock: Callable[[], float] = time.monotonic,
        fetch: Callable[[str, float], str] = fetch_text,
    ) -> None:
        self.metrics_url = metrics_url
        self.pools = dict(pools)
        self.clock = clock
        self.fetch = fetch
        self._last: tuple[float, dict[str, Counts]] | None = None

    def read(self) -> dict[str, Traffic | None]:
        """Traffic per pool since the last read (None: no rate yet, or unreadable)."""
        now = self.clock()
        try:
            text = self.fetch(self.metrics_url, 1.0)
        except (OSError, ValueError):
            return dict.fromkeys(self.pools)
        current = {pool: counts([text], routes) for pool, routes in self.pools.items()}
        last, self._last = self._last, (now, current)
        if last is None:
            return dict.fromkeys(self.pools)
        return {pool: traffic(last[1][pool], current[pool], now - last[0]) for pool in current}


def pods_table(scaled: ScaledPools, flows: Mapping[str, Traffic | None] | None = None, title=""):
    """One row per pool: its traffic (when ``flows`` is given) and its pods."""
    from rich.table import Table

    table = Table(title=title or None)
    table.add_column("pool")
    for column in TRAFFIC_COLUMNS if flows is not None else ():
        table.add_column(column, justify="right")
    for column in ("desired", "ready", "starting", "stopping", "last decision"):
        table.add_column(column)
    for pool, provider in scaled.providers.items():
        status = provider.status()
        state = scaled.autoscalers[pool].state if pool in scaled.autoscalers else None
        cells = [pool]
        if flows is not None:
            cells += _traffic_cells(flows.get(pool))
        cells += [
            str((state.desired if state else None) or status.ready),
            str(status.ready),
            str(status.starting),
            str(status.stopping),
            state.last.reason if state and state.last else "",
        ]
        table.add_row(*cells)
    return table


def _traffic_cells(flow: Traffic | None) -> list[str]:
    if flow is None:
        return ["-"] * len(TRAFFIC_COLUMNS)
    p99 = "-" if flow.p99_ms is None else f"{flow.p99_ms:.0f}"
    rates = (flow.arrivals_per_s, flow.ok_per_s, flow.shed_per_s, flow.errors_per_s)
    return [*(f"{r:.1f}" for r in rates), p99]


class StackView:
    """``tenfold up --autoscale`` on a terminal: the pools' table, refreshed at each
    decision; what the services print scrolls above it."""

    def __init__(self, scaled: ScaledPools, watch: TrafficWatch) -> None:
        from rich.console import Console
        from rich.live import Live

        self.scaled = scaled
        self.watch = watch
        self.live = Live(console=Console(), refresh_per_second=2)

    def __enter__(self) -> StackView:
        self.live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.live.__exit__(*exc)

    def say(self, text: str, end: str = "\n") -> None:
        if text:
            self.live.console.print(text, end=end, markup=False, highlight=False)

    def update(self) -> None:
        title = "tenfold up --autoscale: traffic at the gateway, pods per pool"
        self.live.update(pods_table(self.scaled, self.watch.read(), title))
