"""``tenfold loadtest bench``: the benchmarks are subcommands, and the pod benchmark reads
the batch sizes from a real Prometheus exposition (no server needed)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from typer.testing import CliRunner

import loadtest
from loadtest.cli import app

ROOT = Path(__file__).resolve().parents[2]
WIDE = {"COLUMNS": "200", "TERM": "dumb", "NO_COLOR": "1"}


@pytest.mark.integration  # runs the `tenfold` command in a child process
def test_bench_lists_pod_gateway_and_peers():
    done = subprocess.run(
        [sys.executable, "-m", "tenfold", "loadtest", "bench", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, **WIDE},
    )
    assert done.returncode == 0, done.stderr
    for command in ("pod", "gateway", "peers"):
        assert f" {command} " in done.stdout


@pytest.mark.parametrize(
    ("command", "options"),
    [
        ("pod", ["--duration", "--concurrency", "--rows", "--instances", "--threads", "--out"]),
        ("gateway", ["--repository", "--duration", "--out"]),
        ("peers", ["--repository", "--triton-venv", "--no-triton", "--duration", "--rows"]),
        ("mesh", ["--repository", "--duration", "--rows", "--changes", "--out"]),
    ],
)
def test_each_benchmark_keeps_its_options(command, options):
    result = CliRunner().invoke(app, ["bench", command, "--help"], env=WIDE)
    assert result.exit_code == 0, result.output
    for option in options:
        assert option in result.output


def test_bad_benchmark_arguments_exit_2():
    result = CliRunner().invoke(app, ["bench", "pod", "--duration", "0"])
    assert result.exit_code == 2 and "--duration must be positive" in result.output


def exposition() -> str:
    """What a pod's /metrics serves for its batch sizes, from prometheus_client itself."""
    registry = CollectorRegistry()
    rows = Histogram(
        "tenfold_inference_batch_size_rows",
        "Rows per executed batch.",
        ("model", "version"),
        buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
        registry=registry,
    )
    for value in (1, 4, 64):
        rows.labels(model="ranker", version="1").observe(value)
    rows.labels(model="ranker", version="2").observe(3)
    rows.labels(model="other", version="1").observe(128)
    return generate_latest(registry).decode()


def test_pod_benchmark_reads_batch_sizes_from_a_real_exposition():
    from loadtest.bench_pod import batch_stats

    text = exposition()
    assert batch_stats(text) == (72.0, 4.0)  # model "ranker", every version
    assert batch_stats(text, model="other") == (128.0, 1.0)
    assert batch_stats(text, model="absent") == (0.0, 0.0)
    with pytest.raises(RuntimeError, match="no tenfold_inference_batch_size_rows"):
        batch_stats(generate_latest(CollectorRegistry()).decode())


def test_without_the_loadtest_extra_the_commands_say_how_to_get_it(monkeypatch, tmp_path):
    # the load machinery is imported inside the commands: block hdrh (loadtest extra)
    # and forget what was already imported, as on an install without the extra
    for name in [m for m in sys.modules if m == "hdrh" or m.startswith("hdrh.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "hdrh", None)
    for name in [m for m in sys.modules if m.startswith("loadtest.")]:
        if name not in ("loadtest.cli", "loadtest.targets"):
            monkeypatch.delitem(sys.modules, name)
            monkeypatch.delattr(loadtest, name.split(".")[1], raising=False)
    # (were the import to succeed, the missing repository would stop it before any load)
    missing = str(tmp_path / "no-repository")
    result = CliRunner().invoke(app, ["bench", "gateway", "--repository", missing])
    assert result.exit_code == 2, result.output
    assert "needs the loadtest extra" in result.output and "tenfold[loadtest]" in result.output


def _server(capacity: float):
    """A fake server that keeps its budget up to ``capacity`` req/s; records what was asked."""
    asked = []

    def measure(rate: float) -> dict:
        asked.append(rate)
        return {"rate": rate, "achieved": min(rate, capacity), "meets": rate <= capacity}

    return measure, asked


def test_climb_refines_between_the_last_rung_kept_and_the_one_missed():
    from loadtest.climb import climb

    measure, asked = _server(150.0)
    result = climb((100.0, 125.0, 156.2, 195.3), measure, refine=3)
    # the ladder up to its first miss, then 156.2 / 125 split in 4 geometric steps
    assert asked == [100.0, 125.0, 156.2, 132.2, 139.7, 147.7]
    assert result["best"]["rate"] == 147.7  # within one quarter step of the true 150
    assert [r["rate"] for r in result["ladder"]] == asked
    # without refinement: one full step below
    measure, asked = _server(150.0)
    assert climb((100.0, 125.0, 156.2, 195.3), measure)["best"]["rate"] == 125.0
    assert asked == [100.0, 125.0, 156.2]


def test_climb_stops_refining_at_the_first_miss_and_handles_no_rate_kept():
    from loadtest.climb import climb

    measure, asked = _server(130.0)
    result = climb((100.0, 125.0, 156.2), measure, refine=3)
    assert asked == [100.0, 125.0, 156.2, 132.2]
    assert result["best"]["rate"] == 125.0
    measure, asked = _server(50.0)
    result = climb((100.0, 125.0), measure, refine=3)
    assert result["best"] is None and asked == [100.0]
    measure, asked = _server(1e9)  # never misses: nothing to refine
    assert climb((100.0, 125.0), measure, refine=3)["best"]["rate"] == 125.0 and len(asked) == 2


def test_climb_together_takes_turns_rung_by_rung_and_each_server_stops_on_its_own():
    # loadtest/climb.py: the servers' ladders interleave (order rotated each round), so
    # a machine whose speed drifts during the run shifts them alike
    from loadtest.climb import climb, climb_together

    order = []

    def server(label: str, capacity: float):
        measure, asked = _server(capacity)

        def logged(rate: float) -> dict:
            order.append((label, rate))
            return measure(rate)

        return logged, asked

    (a, a_asked), (b, b_asked), (c, c_asked) = (
        server("a", 150.0),
        server("b", 110.0),
        server("c", 50.0),
    )
    rates = (100.0, 125.0, 156.2, 195.3)
    result = climb_together(rates, {"a": a, "b": b, "c": c}, refine=1)
    # each server is asked what it would be asked alone
    for capacity, asked, label in (
        (150.0, a_asked, "a"),
        (110.0, b_asked, "b"),
        (50.0, c_asked, "c"),
    ):
        measure, alone = _server(capacity)
        assert climb(rates, measure, refine=1) == result[label]
        assert asked == alone
    assert result["a"]["best"]["rate"] == 139.7 and result["b"]["best"]["rate"] == 100.0
    assert result["c"]["best"] is None and list(result) == ["a", "b", "c"]
    # round 1: a b c; round 2 (c done): b a rotated by one; round 3: a b; round 4: a
    assert order == [
        ("a", 100.0), ("b", 100.0), ("c", 100.0),
        ("b", 125.0), ("a", 125.0),
        ("a", 156.2), ("b", 111.8),
        ("a", 139.7),
    ]  # fmt: skip
    assert climb_together((), {"a": a}) == {"a": {"best": None, "ladder": []}}


def test_the_feed_table_gives_the_limit_before_and_after_and_says_when_it_drifted():
    from loadtest.bench_feed import limit_drift

    def lim(before: float, after: float) -> dict:
        return {"before": {"feeds_per_s": before}, "after": {"feeds_per_s": after}}

    (steady,) = limit_drift(lim(1000.0, 1100.0))
    assert "1000 feeds/s before" in steady and "1100 after" in steady
    assert "changed" not in steady  # 10 % apart: within DRIFT
    (drifted,) = limit_drift(lim(1000.0, 1721.4))
    assert "differ by 53%" in drifted and "uncertain" in drifted
    assert limit_drift({"processes": 2, "feeds_per_s": 986.0}) == []  # an older result
