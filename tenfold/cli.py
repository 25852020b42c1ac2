"""The ``tenfold`` command. Each package adds its own sub-command group."""

from __future__ import annotations

import typer

from gateway.cli import app as gateway_app
from inference.cli import app as inference_app
from tenfold.models.cli import app as models_app

app = typer.Typer(
    help="tenfold: high-concurrency model serving.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(inference_app, name="inference")
app.add_typer(gateway_app, name="gateway")
app.add_typer(models_app, name="models")


def main() -> None:
    app()
