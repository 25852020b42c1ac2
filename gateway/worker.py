"""Entry point of one supervised gateway worker (started by ``gateway.main``'s
supervisor): ``python -m gateway.worker SETTINGS_JSON --ready-file PATH``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def main(
    settings_file: Annotated[Path, typer.Argument(help="The gateway settings as JSON")],
    ready_file: Annotated[Path, typer.Option(help="Where to write the ready state")],
) -> None:
    from gateway.main import run_worker
    from gateway.settings import GatewaySettings

    settings = GatewaySettings.model_validate_json(settings_file.read_text(encoding="utf-8"))
    raise typer.Exit(run_worker(settings, ready_file))


if __name__ == "__main__":
    typer.run(main)
