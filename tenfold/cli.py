"""The ``tenfold`` command. Each package adds its own sub-command group."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gateway.cli import app as gateway_app
from inference.cli import app as inference_app
from loadtest.cli import app as loadtest_app
from optimizers.cli import optimize_cmd
from tenfold.models.cli import app as models_app

app = typer.Typer(
    help="tenfold: high-concurrency model serving.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(inference_app, name="inference")
app.add_typer(gateway_app, name="gateway")
app.add_typer(models_app, name="models")
app.add_typer(loadtest_app, name="loadtest")
app.command("optimize")(optimize_cmd)


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
) -> None:
    """Run the local stack: inference pods on loopback and the gateway in front of them."""
    from tenfold.stack import up as run_stack

    if not (repository / "feed_user_tower").is_dir():
        typer.echo(
            f"error: {repository} has no default models; run `tenfold models build --out "
            f"{repository}` first",
            err=True,
        )
        raise typer.Exit(2)
    raise typer.Exit(run_stack(repository, pods, port, grpc_port, workers, threads))


def main() -> None:
    app()
