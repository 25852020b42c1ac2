"""``tenfold gateway ...`` commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="The gateway: feed, effects and KServe v2 pass-through.", no_args_is_help=True
)


@app.command()
def serve(
    config: Annotated[Path | None, typer.Option("--config", help="YAML file of settings")] = None,
    ready_file: Annotated[
        Path | None,
        typer.Option(help="Write the ready state (JSON: state, ports) here, for launchers"),
    ] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port (default 8080; 0 = any free)")] = None,
    grpc_port: Annotated[
        int | None, typer.Option(help="gRPC port (default 8081; 0 = any free)")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="Worker processes sharing the ports (default 1)")
    ] = None,
    host: Annotated[
        str | None,
        typer.Option(help="Bind address (default 127.0.0.1; 0.0.0.0 needs API keys)"),
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(help="A port serving only /metrics, without a key (0 = any free)"),
    ] = None,
) -> None:
    """Serve the gateway until SIGTERM. Every setting also reads TENFOLD_GATEWAY_<NAME>."""
    from gateway.main import run_gateway
    from gateway.settings import GatewaySettings
    from servicekit.settings import SettingsError, load_settings

    try:
        settings = load_settings(
            GatewaySettings,
            config,
            port=port,
            grpc_port=grpc_port,
            workers=workers,
            host=host,
            metrics_port=metrics_port,
        )
    except SettingsError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    raise typer.Exit(run_gateway(settings, ready_file))


@app.command("hash-key")
def hash_key(key: Annotated[str, typer.Argument(help="An API key to store in the config")]) -> None:
    """Print the SHA-256 to put in a tenant's ``key_sha256`` (the key itself is not stored)."""
    from gateway.auth import hash_key as digest

    typer.echo(digest(key))
