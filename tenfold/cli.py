"""The ``tenfold`` command, on top of every package: each adds its own sub-command group.

The groups are imported only when they are asked for: ``tenfold inference serve`` (a
pod) loads the inference CLI, not the load tester's or the optimizer's.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Annotated

import typer

#: sub-command -> "module:attribute" of its typer app (or, for a command, its function)
GROUPS = {
    "inference": "inference.cli:app",
    "gateway": "gateway.cli:app",
    "models": "tenfold.models.cli:app",
    "loadtest": "loadtest.cli:app",
    "mesh": "mesh.cli:app",
    "autoscale": "autoscale.cli:app",
    "events": "gateway.events.cli:app",
}
COMMANDS = {"optimize": "optimizers.cli:optimize_cmd"}

app = typer.Typer(
    help="tenfold: high-concurrency model serving.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _load(target: str):
    module, attribute = target.split(":")
    return getattr(importlib.import_module(module), attribute)


def register(wanted: str | None = None) -> typer.Typer:
    """Add the sub-commands to ``app``: only ``wanted`` when it names one, else all."""
    for name, target in GROUPS.items():
        if wanted in (None, name):
            app.add_typer(_load(target), name=name)
    for name, target in COMMANDS.items():
        if wanted in (None, name):
            app.command(name)(_load(target))
    return app


@app.command()
def up(
    repository: Annotated[
        Path, typer.Option(help="Model repository with the default models")
    ] = Path("var/model-repository"),
    pods: Annotated[int, typer.Option(min=1, help="Inference pods to start")] = 1,
    port: Annotated[int, typer.Option(help="Gateway HTTP port")] = 8080,
    grpc_port: Annotated[int, typer.Option(help="Gateway gRPC port")] = 8081,
    workers: Annotated[int, typer.Option(min=1, help="Gateway worker processes")] = 1,
    threads: Annotated[int, typer.Option(min=0, help="ONNX Runtime threads per pod")] = 1,
    mesh: Annotated[
        bool,
        typer.Option(
            "--mesh/--no-mesh",
            help="Envoy at the edge, driven by tenfold's control plane (--no-mesh: the "
            "gateway on the public ports with fixed endpoints)",
        ),
    ] = True,
    tls_cert: Annotated[
        Path | None, typer.Option(help="PEM certificate: TLS at the edge (with --tls-key)")
    ] = None,
    tls_key: Annotated[Path | None, typer.Option(help="PEM private key of --tls-cert")] = None,
    autoscale: Annotated[
        bool,
        typer.Option(
            "--autoscale/--no-autoscale",
            help="Scale the pod pool on demand (--pods is then the minimum)",
        ),
    ] = False,
    target_rps_per_pod: Annotated[
        list[str] | None,
        typer.Option(
            help="Autoscale: POOL=REQ_PER_S one pod of the pool serves well (repeatable; "
            "defaults feed=200, effects=20)"
        ),
    ] = None,
    max_pods: Annotated[int, typer.Option(min=1, help="Autoscale: most pods")] = 10,
    cpu_per_pod: Annotated[
        float | None,
        typer.Option(help="Autoscale: CPU cores per pod, a cgroup quota (default: no limit)"),
    ] = None,
    spares: Annotated[
        int,
        typer.Option(
            min=0,
            help="Autoscale: warm pods kept ready outside each pool, taken at once by a "
            "scale-up (they cost memory, not CPU)",
        ),
    ] = 0,
    startup_cpu: Annotated[
        float,
        typer.Option(
            min=0,
            help="Autoscale: CPU cores of quota while a pod starts, settled to "
            "--cpu-per-pod once it is ready (0: --cpu-per-pod from the start)",
        ),
    ] = 1.0,
    fork_server: Annotated[
        bool,
        typer.Option(
            "--fork-server/--no-fork-server",
            help="Autoscale: fork pods from a process that has imported their modules once "
            "(~0.7 s of CPU less a pod), not as new interpreters",
        ),
    ] = True,
    events: Annotated[
        bool,
        typer.Option(
            "--events/--no-events",
            help="Feedback events and user state: a local Redis and the stream processor "
            "(--no-events: a stateless feed)",
        ),
    ] = True,
    state_dir: Annotated[
        Path, typer.Option(help="Where the local Redis keeps its data (append-only file)")
    ] = Path("var/redis"),
) -> None:
    """Run the local stack on loopback: the mesh control plane, inference pods, the
    gateway and Envoy at the edge on the public ports, and (with events) Redis and the
    stream processor."""
    from tenfold.scaling import AutoscaleOptions, parse_targets
    from tenfold.stack import StackOptions
    from tenfold.stack import up as run_stack

    if not (repository / "feed_user_tower").is_dir():
        typer.echo(
            f"error: {repository} has no default models; run `tenfold models build --out "
            f"{repository}` first",
            err=True,
        )
        raise typer.Exit(2)
    tls = None
    if tls_cert is not None or tls_key is not None:
        if tls_cert is None or tls_key is None or not mesh:
            typer.echo("error: TLS needs --tls-cert and --tls-key, and the mesh", err=True)
            raise typer.Exit(2)
        for path in (tls_cert, tls_key):
            if not path.is_file():
                typer.echo(f"error: {path}: no such file", err=True)
                raise typer.Exit(2)
        tls = (tls_cert, tls_key)
    scaling = None
    if autoscale:
        if not mesh:
            typer.echo("error: --autoscale needs the mesh (drop --no-mesh)", err=True)
            raise typer.Exit(2)
        try:
            targets = parse_targets(target_rps_per_pod or [])
        except ValueError as exc:
            typer.echo(f"error: --target-rps-per-pod {exc}", err=True)
            raise typer.Exit(2) from None
        if cpu_per_pod is not None and cpu_per_pod <= 0:
            typer.echo("error: --cpu-per-pod must be > 0", err=True)
            raise typer.Exit(2)
        if max_pods < pods:
            typer.echo(f"error: --max-pods ({max_pods}) < --pods ({pods})", err=True)
            raise typer.Exit(2)
        scaling = AutoscaleOptions(
            targets,
            max_pods,
            cpu_per_pod,
            spares=spares,
            startup_cpu=startup_cpu or None,
            fork_server=fork_server,
        )
    options = StackOptions(
        repository,
        pods,
        port,
        grpc_port,
        workers,
        threads,
        mesh,
        tls=tls,
        autoscale=scaling,
        state_dir=state_dir if events else None,
    )
    raise typer.Exit(run_stack(options))


@app.command()
def drill(
    repository: Annotated[
        Path, typer.Option(help="Model repository with the default models")
    ] = Path("var/model-repository"),
    scenario: Annotated[str, typer.Option(help="effects or feed")] = "effects",
    cpu_per_pod: Annotated[
        float, typer.Option(help="CPU cores per pod (a cgroup quota; 0 = no limit)")
    ] = 0.15,
    pod_capacity: Annotated[
        float | None, typer.Option(help="req/s of one pod (default: calibrate it)")
    ] = None,
    surge: Annotated[float, typer.Option(help="surge factor over the base load")] = 10.0,
    base: Annotated[float, typer.Option(help="seconds of base load first")] = 30.0,
    hold: Annotated[float, typer.Option(help="seconds the surge is held")] = 120.0,
    after: Annotated[float, typer.Option(help="seconds of base load after the surge")] = 120.0,
    max_pods: Annotated[int, typer.Option(min=1, help="most pods")] = 20,
    spares: Annotated[int, typer.Option(min=0, help="warm pods kept ready outside the pool")] = 0,
    startup_cpu: Annotated[
        float,
        typer.Option(
            min=0,
            help="CPU cores of quota while a pod starts, settled to --cpu-per-pod once it "
            "is ready (0: --cpu-per-pod from the start)",
        ),
    ] = 1.0,
    fork_server: Annotated[
        bool,
        typer.Option(
            "--fork-server/--no-fork-server",
            help="Fork pods from a process that has imported their modules once "
            "(~0.7 s of CPU less a pod), not as new interpreters",
        ),
    ] = True,
    report: Annotated[
        Path | None, typer.Option(help="write drill.json and drill.html here")
    ] = None,
) -> None:
    """Rehearse a tenfold surge through the real stack: calibrate one pod under its CPU
    limit, run base load at 60% of it, step to 10x, hold, step back; print time to
    capacity, the shed share during the surge and the 5xx count."""
    from tenfold.drill import BUDGET_MS, DrillPlan
    from tenfold.drill import drill as run_drill

    if scenario not in BUDGET_MS:
        typer.echo(f"error: --scenario must be one of {sorted(BUDGET_MS)}", err=True)
        raise typer.Exit(2)
    if cpu_per_pod < 0 or surge <= 1 or min(base, hold, after) <= 0:
        typer.echo("error: --cpu-per-pod >= 0, --surge > 1, durations > 0", err=True)
        raise typer.Exit(2)
    if pod_capacity is not None and pod_capacity <= 0:
        typer.echo("error: --pod-capacity must be > 0", err=True)
        raise typer.Exit(2)
    plan = DrillPlan(
        repository,
        scenario,
        cpu_per_pod or None,
        pod_capacity,
        surge=surge,
        base_s=base,
        hold_s=hold,
        after_s=after,
        max_pods=max_pods,
        spares=spares,
        startup_cpu=startup_cpu or None,
        fork_server=fork_server,
    )
    results = run_drill(plan, report)
    typer.echo(json.dumps(results["summary"], indent=2))


def main() -> None:
    first = sys.argv[1] if len(sys.argv) > 1 else None
    register(first if first in GROUPS or first in COMMANDS else None)()
