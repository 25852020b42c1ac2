"""The drill's summary from per-second rows (pure), and its command's argument checks."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from tenfold.cli import app
from tenfold.drill import Second, summary


def second(t, phase, offered, ok, shed=0, errors=0, server=0, ready=1, capacity=5.0):
    return Second(t, phase, offered, ok, shed, errors, server, 10.0, 50.0, ready, ready, capacity)


def test_summary_times_capacity_from_the_step_and_counts_sheds_of_the_surge_only():
    rows = [second(t, "base", 3, 3, shed=1) for t in range(5)]
    rows += [second(5, "surge", 30, 5, shed=20, errors=5, server=5)]
    rows += [second(6, "surge", 30, 10, shed=20, ready=4, capacity=20)]
    rows += [second(t, "surge", 30, 30, ready=8, capacity=40) for t in range(7, 10)]
    rows += [second(10, "after", 3, 3, ready=8, capacity=40)]
    phases = [("base", 0), ("surge", 5), ("after", 10)]
    result = summary(rows, phases, 5.0)
    assert result["time_to_capacity_s"] == 2  # t=7, the step at t=5
    assert result["surge_rps"] == 30
    assert result["surge_shed_share"] == pytest.approx(40 / (5 + 20 + 5 + 10 + 20 + 90), abs=1e-4)
    assert result["server_errors_5xx"] == 5
    assert result["max_ready"] == 8 and result["final_ready"] == 8


def test_summary_says_never_when_capacity_never_covers_the_surge():
    rows = [second(0, "base", 3, 3), second(1, "surge", 30, 5), second(2, "after", 3, 3)]
    result = summary(rows, [("base", 0), ("surge", 1), ("after", 2)], 5.0)
    assert result["time_to_capacity_s"] is None


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--scenario", "mixed"], "--scenario must be one of"),
        (["--surge", "1"], "--surge > 1"),
        (["--hold", "0"], "durations > 0"),
        (["--pod-capacity", "-3"], "--pod-capacity must be > 0"),
    ],
)
def test_bad_drill_arguments_exit_2_before_anything_starts(args, needle):
    result = CliRunner().invoke(app, ["drill", *args])
    assert result.exit_code == 2
    assert needle in result.output


def test_the_report_keeps_the_gateways_counts_by_label():
    from prometheus_client import CollectorRegistry, Counter, generate_latest

    from gateway.metrics import GatewayMetrics
    from tenfold.drill import counts_in

    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry)
    metrics.shed.labels("effects", "concurrency").inc(3)
    metrics.requests.labels("effects", "503", "").inc(2)
    Counter("other_total", "not the gateway's", registry=registry).inc()
    counts = counts_in(generate_latest(registry).decode())
    assert counts["shed reason=concurrency route=effects"] == 3
    assert counts["requests code=503 route=effects"] == 2
    assert not any(key.startswith("other") for key in counts)
