"""``tenfold optimize MODEL``: the command-line face of optimizers.pipeline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from servicekit.settings import SettingsError, load_settings


def optimize_cmd(
    model: Annotated[str, typer.Argument(help="Model name in the repository")],
    repository: Annotated[Path, typer.Option(help="Model repository")] = Path(
        "var/model-repository"
    ),
    target: Annotated[str | None, typer.Option(help="cpu or gpu")] = None,
    passes: Annotated[
        str | None, typer.Option(help="Comma-separated passes (cleanup,int8,ort,fp16,tune)")
    ] = None,
    threads: Annotated[
        int | None, typer.Option(min=0, help="Threads of every runtime in the report (0: all)")
    ] = None,
    bench: Annotated[bool | None, typer.Option(help="Measure the report's table")] = None,
    pod_cores: Annotated[
        int | None,
        typer.Option(min=0, help="Cores one pod may use when tuning instances (0: all)"),
    ] = None,
    allow_unverified: Annotated[
        bool | None, typer.Option(help="Keep passes whose parity cannot be checked here")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="YAML settings (thresholds etc.)")] = None,
    report_dir: Annotated[
        Path | None, typer.Option(help="Also write <model>.json and <model>.md here")
    ] = None,
) -> None:
    """Optimise MODEL's latest version: passes gated by parity, a new version with a
    manifest, a tuned config.pbtxt, and latency/throughput against PyTorch eager."""
    from optimizers import report
    from optimizers.errors import OptimizeError
    from optimizers.pipeline import MANIFEST, optimize
    from optimizers.settings import OptimizeSettings

    console = Console(stderr=True)
    overrides: dict = {
        "target": target,
        "allow_unverified": allow_unverified,
        "bench": bench,
        "pod_cores": pod_cores,
    }
    if passes is not None:
        overrides["passes"] = tuple(p.strip() for p in passes.split(",") if p.strip())
    try:
        settings = load_settings(OptimizeSettings, config, **overrides)
        if threads is not None:
            settings = settings.model_copy(
                update={"benchmark": settings.benchmark.model_copy(update={"threads": threads})}
            )
        with console.status("starting") as status:
            outcome = optimize(repository, model, settings, lambda s: status.update(s))
    except (SettingsError, OptimizeError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    out = Console()
    out.print(report.passes_table(outcome.manifest))
    table = report.bench_table(outcome.manifest)
    if table is not None:
        out.print(table)
    if report_dir is not None:
        report_dir.mkdir(parents=True, exist_ok=True)
        (report_dir / f"{model}.json").write_text(json.dumps(outcome.manifest, indent=2))
        (report_dir / f"{model}.md").write_text(report.markdown(outcome.manifest))
    if outcome.version is None:
        typer.echo(
            f"no pass was kept: version {outcome.manifest['source_version']} stays served",
            err=True,
        )
        raise typer.Exit(1)
    typer.echo(
        f"wrote {repository / model / str(outcome.version)} ({MANIFEST}); config.pbtxt tuned"
    )
