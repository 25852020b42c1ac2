"""``tenfold autoscale ...`` commands."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="Autoscaling: policy, providers and the HPA simulator.", no_args_is_help=True
)


def parse_trace(text: str) -> list[tuple[float, float]]:
    """``"0:200,60:2000,180:200"`` -> [(0, 200), (60, 2000), (180, 200)]: demand (req/s)
    from each time (s) on."""
    points = []
    for part in text.split(","):
        when, sep, rate = part.strip().partition(":")
        try:
            if not sep:
                raise ValueError
            points.append((float(when.rstrip("s")), float(rate)))
        except ValueError:
            raise typer.BadParameter(f"{part!r}: expected SECONDS:RPS") from None
    points.sort()
    if not points or points[0][0] > 0:
        raise typer.BadParameter("the trace must start at 0")
    return points


def pick_hpa(docs: list, name: str | None):
    """The HorizontalPodAutoscaler named ``name`` among ``docs`` (or the only one)."""
    from autoscale.hpa import HpaError

    hpas = [d for d in docs if isinstance(d, dict) and d.get("kind") == "HorizontalPodAutoscaler"]
    names = [d.get("metadata", {}).get("name") for d in hpas]
    if name is not None:
        hpas = [d for d, n in zip(hpas, names, strict=True) if n == name]
    if len(hpas) == 1:
        return hpas[0]
    if not hpas and name is None and docs:
        return docs[0]  # not an HPA: parse_hpa says what is wrong with it
    if not hpas:
        raise HpaError(f"no HorizontalPodAutoscaler named {name!r} (found: {names})")
    raise HpaError(f"several HorizontalPodAutoscalers ({names}): choose one with --name")


@app.command("simulate-hpa")
def simulate_hpa(
    hpa: Annotated[
        Path,
        typer.Option(
            help="YAML with a HorizontalPodAutoscaler (autoscaling/v2), e.g. the output of "
            "`kubectl kustomize k8s/overlays/cpu`; - reads standard input"
        ),
    ],
    name: Annotated[
        str | None, typer.Option(help="the HPA's name, where the YAML holds several")
    ] = None,
    trace: Annotated[
        str, typer.Option(help="demand steps SECONDS:RPS,... (e.g. 0:200,60:2000)")
    ] = "0:40,60:400",
    pod_start: Annotated[float, typer.Option(help="seconds from scale-up to ready")] = 20.0,
    metric_lag: Annotated[float, typer.Option(help="seconds the metric lags demand")] = 15.0,
    duration: Annotated[float, typer.Option(help="seconds simulated")] = 600.0,
    start_replicas: Annotated[int | None, typer.Option(help="replicas at t=0")] = None,
) -> None:
    """The documented HPA algorithm on a demand trace: the replica timeline, and the time
    from the largest step to capacity and to 10x ready replicas."""
    import yaml
    from rich.console import Console
    from rich.table import Table

    from autoscale.hpa import HpaError, parse_hpa, simulate, time_to_capacity, time_to_ready

    points = parse_trace(trace)
    try:
        text = sys.stdin.read() if str(hpa) == "-" else hpa.read_text()
        docs = [d for d in yaml.safe_load_all(text) if d]
        model = parse_hpa(pick_hpa(docs, name))
    except (OSError, yaml.YAMLError, HpaError) as exc:
        typer.echo(f"error: {hpa}: {exc}", err=True)
        raise typer.Exit(2) from None

    def demand(t: float) -> float:
        return [rate for when, rate in points if when <= t][-1]

    steps = simulate(model, demand, duration, pod_start, metric_lag, start_replicas)
    table = Table("t (s)", "demand/s", "desired", "ready")
    last = None
    for step in steps:
        row = (step.demand, step.desired, step.ready)
        if row != last:
            table.add_row(f"{step.t:g}", f"{step.demand:g}", str(step.desired), str(step.ready))
            last = row
    console = Console()
    console.print(table)
    jumps = [(b[1] / a[1], b[0]) for a, b in itertools.pairwise(points) if a[1] > 0]
    if jumps:
        factor, at = max(jumps)
        before = next(s.ready for s in reversed(steps) if s.t < at)
        capacity = time_to_capacity(steps, at, model.target_per_pod)
        tenfold = time_to_ready(steps, at, before * 10)
        console.print(
            f"step x{factor:g} at {at:g} s: capacity covers demand after "
            f"{'never' if capacity is None else f'{capacity:g} s'}; "
            f"10x ready ({before * 10}) after {'never' if tenfold is None else f'{tenfold:g} s'}"
        )
