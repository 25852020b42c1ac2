"""``tenfold events ...`` commands."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Feedback events: the stream processor.", no_args_is_help=True)


@app.command()
def process(
    redis: Annotated[
        str, typer.Option(help="Redis URL of the event log and state")
    ] = "redis://127.0.0.1:6379/0",
    prefix: Annotated[str, typer.Option(help="Prefix of every Redis key")] = "tenfold:",
    consumer: Annotated[
        str | None,
        typer.Option(
            help="Name in the consumer group (default host-pid); keep it across "
            "restarts to take back what was in hand"
        ),
    ] = None,
    batch: Annotated[int, typer.Option(min=1, max=10_000, help="Entries per batch")] = 256,
    claim_idle_ms: Annotated[
        int, typer.Option(min=1, help="Take over another consumer's entries idle this long")
    ] = 30_000,
    history: Annotated[int, typer.Option(min=1, help="Recent positives kept per user")] = 20,
    seen: Annotated[int, typer.Option(min=1, help="Recently shown items kept per user")] = 500,
    ttl_s: Annotated[int, typer.Option(min=1, help="A user's state expires after this")] = 604_800,
    host: Annotated[str, typer.Option(help="Bind address of /metrics")] = "127.0.0.1",
    metrics_port: Annotated[int, typer.Option(help="Port of /metrics (0 = any free)")] = 0,
    ready_file: Annotated[
        Path | None, typer.Option(help="Write the ready state (JSON: state, ports) here")
    ] = None,
) -> None:
    """Apply the event log to user state and item counters until SIGTERM."""
    from gateway.events.processor import ProcessorOptions
    from gateway.events.service import ProcessorConfig, ProcessorService
    from gateway.events.settings import StateSettings
    from servicekit.logs import setup_logging
    from servicekit.runloop import RunOptions, run

    setup_logging()
    name = consumer or f"{socket.gethostname()}-{os.getpid()}"
    config = ProcessorConfig(
        redis_url=redis,
        prefix=prefix,
        options=ProcessorOptions(name, batch=batch, claim_idle_ms=claim_idle_ms),
        state=StateSettings(history=history, seen=seen, ttl_s=ttl_s),
        host=host,
        metrics_port=metrics_port,
    )
    raise typer.Exit(run("events", lambda: ProcessorService(config), RunOptions(ready_file)))
