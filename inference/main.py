"""Run an inference pod in the foreground until SIGTERM/SIGINT (servicekit's loop)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from inference.repository.errors import RepositoryError
from inference.server import InferenceServer, describe_ports
from inference.settings import InferenceSettings
from servicekit.logs import say, setup_logging
from servicekit.runloop import RunOptions, StartError, run

NAME = "inference"


class PodService:
    """An inference pod as a servicekit ``Service``: listeners first (live, not ready),
    then models load and warm up (ready)."""

    def __init__(self, settings: InferenceSettings) -> None:
        self.settings = settings
        self.server = InferenceServer(settings)

    @property
    def host(self) -> str:
        return self.settings.host

    async def start(self) -> Mapping[str, int]:
        try:
            ports = await self.server.start_listeners()
        except OSError as exc:
            raise StartError(f"cannot listen: {exc}") from None
        return {"http": ports.http, "grpc": ports.grpc, "metrics": ports.metrics}

    def listening(self, ports: Mapping[str, int]) -> str:
        return describe_ports(self.settings.host, self.server.ports)

    async def prepare(self) -> str:
        try:
            await self.server.load_models()
        except (RepositoryError, FileNotFoundError) as exc:
            raise StartError(str(exc)) from None
        for name, reason in self.server.dataplane.failed_models().items():
            say(NAME, f"model '{name}' NOT served: {reason}", error=True)
        served = sorted({v.spec.name for v in self.server.dataplane.served_versions()})
        return f"ready, serving {', '.join(served) or 'no models'}"

    async def drain(self) -> None:
        await self.server.drain()

    async def close(self) -> None:
        await self.server.close()


def run_pod(settings: InferenceSettings, ready_file: Path | None = None) -> int:
    setup_logging(settings.log_level)
    return run(NAME, lambda: PodService(settings), RunOptions(ready_file))
