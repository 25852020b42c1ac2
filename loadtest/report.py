"""Load reports: JSON for machines (histograms kept in HdrHistogram's encoding, so a
report can be re-read, re-plotted and compared exactly), tables for people."""

from __future__ import annotations

import json
import os
import platform
import socket
from collections import Counter
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

from loadtest.recorder import PERCENTILES, Interval, decode, encode, max_ms, percentile_ms
from loadtest.runner import RunPlan, StepResult
from loadtest.targets import LoadTestError

FORMAT = "tenfold-loadtest/1"


def step_dict(step: StepResult, plan: RunPlan) -> dict:
    return {
        "target_rate": step.rate,
        "duration_s": step.duration_s,
        "elapsed_s": round(step.elapsed_s, 3),
        "sent": step.sent,
        "completed": step.total.completed,
        "ok": step.total.ok,
        "achieved_rate": round(step.achieved_rate, 2),
        "error_rate": round(step.error_rate, 5),
        "errors": step.total.errors,
        "statuses": dict(sorted(step.total.statuses.items())),
        "latency_ms": step.total.latency_summary(),
        "latency_by_outcome_ms": step.total.outcome_summaries(),
        "start_lag_ms": {
            "p99": round(percentile_ms(step.start_lag, 99), 3),
            "max": round(max_ms(step.start_lag), 3),
        },
        "meets": step.meets(plan),
        "histogram": encode(step.total.histogram),
        "timeline": [
            {
                "second": i,
                "ok": iv.ok,
                "completed": iv.completed,
                "errors": iv.errors,
                **iv.latency_summary(),
                "histogram": encode(iv.histogram),
            }
            for i, iv in enumerate(step.timeline)
        ],
    }


def build(plan: RunPlan, steps: list[StepResult], label: str | None = None) -> dict:
    best = [s for s in steps if s.meets(plan)]
    return {
        "format": FORMAT,
        "label": label or f"{plan.spec.name} @ {plan.target.url}",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "plan": {
            "target": plan.target.url,
            "scenario": asdict(plan.spec),
            "rates": list(plan.rates),
            "duration_s": plan.duration_s,
            "processes": plan.processes,
            "arrivals": "poisson" if plan.poisson else "constant",
            "warmup_s": plan.warmup_s,
            "timeout_s": plan.timeout_s,
            "p99_budget_ms": plan.p99_budget_ms,
            "max_error_rate": plan.max_error_rate,
            "generator_nice": plan.nice,
        },
        "machine": {
            "host": socket.gethostname(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "best_rate": max((s.rate for s in best), default=None) if len(steps) > 1 else None,
        "steps": [step_dict(s, plan) for s in steps],
    }


def write(report: dict, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "report.json"
    path.write_text(json.dumps(report, indent=1) + "\n")
    return path


def load(path: Path) -> dict:
    if path.is_dir():
        path = path / "report.json"
    try:
        report = json.loads(path.read_text())
    except FileNotFoundError:
        raise LoadTestError(f"no report at {path}") from None
    except json.JSONDecodeError as exc:
        raise LoadTestError(f"{path} is not JSON: {exc}") from None
    if not isinstance(report, dict) or report.get("format") != FORMAT:
        raise LoadTestError(f"{path} is not a tenfold load report (format {FORMAT})")
    return report


def total(step: dict) -> Interval:
    """A step's merged histogram and statuses, decoded from the report."""
    return Interval(decode(step["histogram"]), Counter(step["statuses"]))


def _errors(step: dict) -> str:
    return ", ".join(f"{s}: {n}" for s, n in step["errors"].items()) or "-"


def steps_table(report: dict) -> Table:
    table = Table(title=report["label"])
    for col in ("rate", "achieved/s", *(f"p{p:g} ms" for p in PERCENTILES), "max ms", "errors"):
        table.add_column(col, justify="right" if col != "errors" else "left")
    budget = report["plan"]["p99_budget_ms"] is not None or len(report["steps"]) > 1
    if budget:
        table.add_column("meets")
    for step in report["steps"]:
        lat = step["latency_ms"]
        row = [
            f"{step['target_rate']:g}",
            f"{step['achieved_rate']:.1f}",
            *(f"{lat[f'p{p:g}_ms']:.2f}" for p in PERCENTILES),
            f"{lat['max_ms']:.2f}",
            _errors(step),
        ]
        if budget:
            row.append("yes" if step["meets"] else "no")
        table.add_row(*row)
    return table


def compare_table(reports: list[dict]) -> Table:
    """The last (or best) step of each report side by side; ratios against the first."""
    table = Table(title="comparison (ratios against the first report)")
    table.add_column("")
    chosen = [chosen_step(r) for r in reports]
    for r in reports:
        table.add_column(r["label"], justify="right")
    rows = [("rate", lambda s: s["target_rate"]), ("achieved/s", lambda s: s["achieved_rate"])]
    rows += [(f"p{p:g} ms", lambda s, p=p: s["latency_ms"][f"p{p:g}_ms"]) for p in PERCENTILES]
    rows += [
        ("max ms", lambda s: s["latency_ms"]["max_ms"]),
        ("error rate", lambda s: s["error_rate"]),
    ]
    for name, get in rows:
        base = get(chosen[0])
        cells = []
        for i, step in enumerate(chosen):
            value = get(step)
            ratio = f" ({value / base:.2f}x)" if i and base and name != "error rate" else ""
            cells.append(f"{value:g}{ratio}")
        table.add_row(name, *cells)
    best = ["-" if r.get("best_rate") is None else f"{r['best_rate']:g}" for r in reports]
    if any(b != "-" for b in best):
        table.add_row("best rate in budget", *best)
    return table


def chosen_step(report: dict) -> dict:
    """The step a comparison uses: the best one within budget, else the last one."""
    steps = report["steps"]
    if report.get("best_rate") is not None:
        return next(s for s in steps if s["target_rate"] == report["best_rate"])
    return steps[-1]


def print_table(table: Table) -> None:
    Console(width=160).print(table)
