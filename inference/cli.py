"""``tenfold inference ...`` commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="Inference pods: serve a model repository over KServe v2.", no_args_is_help=True
)


@app.command()
def serve(
    model_repository: Annotated[
        Path | None,
        typer.Option(help="Model repository directory [env TENFOLD_INFERENCE_MODEL_REPOSITORY]"),
    ] = None,
    host: Annotated[str | None, typer.Option(help="Listen address (default 127.0.0.1)")] = None,
    http_port: Annotated[
        int | None, typer.Option(help="HTTP port (default 8000; 0 = any free)")
    ] = None,
    grpc_port: Annotated[
        int | None, typer.Option(help="gRPC port (default 8001; 0 = any free)")
    ] = None,
    metrics_port: Annotated[
        int | None, typer.Option(help="Metrics port (default 8002; 0 = any free)")
    ] = None,
    intra_op_threads: Annotated[
        int | None, typer.Option(help="ONNX Runtime intra-op threads (0 = all cores)")
    ] = None,
    load_model: Annotated[
        list[str] | None,
        typer.Option(help="Serve only this model (repeatable; default: every model)"),
    ] = None,
    strict_model_load: Annotated[
        bool | None,
        typer.Option(
            "--strict-model-load/--no-strict-model-load",
            help="Refuse to start if a model fails to load (default on)",
        ),
    ] = None,
    drain_grace_s: Annotated[
        float | None,
        typer.Option(help="On SIGTERM, seconds not ready but still serving (default 1)"),
    ] = None,
    config: Annotated[Path | None, typer.Option("--config", help="YAML file of settings")] = None,
    ready_file: Annotated[
        Path | None,
        typer.Option(help="Write the ready state (JSON: state, ports) here, for launchers"),
    ] = None,
) -> None:
    """Serve MODEL_REPOSITORY until SIGTERM. Every setting also reads TENFOLD_INFERENCE_<NAME>."""
    from inference.main import run_pod
    from inference.settings import InferenceSettings
    from servicekit.settings import SettingsError, load_settings

    try:
        settings = load_settings(
            InferenceSettings,
            config,
            model_repository=model_repository,
            host=host,
            http_port=http_port,
            grpc_port=grpc_port,
            metrics_port=metrics_port,
            intra_op_threads=intra_op_threads,
            strict_model_load=strict_model_load,
            load_models=load_model or None,
            drain_grace_s=drain_grace_s,
        )
    except SettingsError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    raise typer.Exit(run_pod(settings, ready_file))


@app.command("example-repo")
def example_repo(
    out: Annotated[Path, typer.Argument(help="Directory to write the repository into")],
) -> None:
    """Write a small demo model repository (a ranking-style MLP), no torch needed."""
    from inference.examples import write_example_repository

    for path in write_example_repository(out):
        typer.echo(f"wrote {path}")
