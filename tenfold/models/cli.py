"""``tenfold models ...`` commands (need the torch extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Build the default models into a model repository.", no_args_is_help=True)


@app.command("build")
def build_cmd(
    out: Annotated[Path, typer.Option(help="Model repository to write")] = Path(
        "var/model-repository"
    ),
    quick: Annotated[
        bool, typer.Option(help="Small data, for tests (well under a minute)")
    ] = False,
    seed: Annotated[int, typer.Option(help="Seed of the simulation and training")] = 7,
) -> None:
    """Simulate logs, train recall and ranking models, export them with a report."""
    try:
        from tenfold.models.build import BuildError, build
    except ImportError as exc:
        typer.echo(
            f"error: {exc.name} is missing; install the torch extra: pip install -e '.[torch]'",
            err=True,
        )
        raise typer.Exit(2) from None
    try:
        report = build(out, quick=quick, seed=seed).report
    except BuildError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    for head, fig in report["ranker"].items():
        base = fig["popularity_auc"]
        typer.echo(f"ranker {head:<9} AUC {fig['auc']:.3f}  (popularity {base:.3f})")
    r = report["recall"]
    pool = r["popularity_pool_recall_at_100"]
    typer.echo(f"recall@100 {r['recall_at_100']:.3f}  (popularity pool {pool:.3f})")
    for photo, fig in report["effects"].items():
        typer.echo(
            f"effects on held-out '{photo}': PSNR {fig['psnr_db']:.1f} dB "
            f"(input {fig['input_psnr_db']:.1f} dB), SSIM {fig['ssim']:.3f}"
        )
    typer.echo(f"parity (max abs diff) {report['parity_max_abs_diff']}")
    typer.echo(f"wrote {out} in {report['timings_s']['total']:.0f}s")


@app.command("events-quality")
def events_quality_cmd(
    repository: Annotated[
        Path, typer.Option(help="Model repository with the default models")
    ] = Path("var/model-repository"),
    users: Annotated[int, typer.Option(min=10, help="held-out users replayed")] = 300,
    out: Annotated[Path | None, typer.Option(help="write the figures here (JSON)")] = None,
) -> None:
    """Replay held-out users' recent positives through POST /v1/events (real Redis,
    gateway, pod, processor) and score their feeds, without a history sent, before and
    after: hit rate and NDCG@20 on their held-out finishes (docs/events.md)."""
    import json

    from tenfold.models.events_quality import events_quality

    if not (repository / "build_report.json").is_file():
        typer.echo(f"error: {repository} has no build_report.json (tenfold models build)", err=True)
        raise typer.Exit(2)
    figures = events_quality(repository, users)
    text = json.dumps(figures, indent=1)
    typer.echo(text)
    if out is not None:
        out.write_text(text + "\n")
