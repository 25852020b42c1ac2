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
