"""Start the gateway as a child process (``python -m tenfold gateway serve``) with a
generated config; its ports come from its ready file. The public way for tests,
benchmarks and the local stack to run a gateway in front of pods."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import yaml

from servicekit.launcher import ServiceProcess, launch

#: the models of the default build, all in one pool
DEFAULT_MODELS = (
    "feed_recall",
    "feed_list_ranker",
    "feed_user_tower",
    "feed_ranker",
    "effects_cartoon",
)


def gateway_config(repo: Path, pods: Sequence[ServiceProcess], **overrides) -> dict:
    """Gateway settings for the default models served by ``pods``."""
    config = {
        "pools": {
            "default": {
                "endpoints": [{"grpc": p.grpc, "http": p.http} for p in pods],
                "models": list(DEFAULT_MODELS),
            }
        },
        "feed": {"assets_dir": str(repo / "feed_user_tower")},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


def start_gateway(
    config: dict, *args: str, port: int = 0, grpc_port: int = 0, env: dict | None = None
) -> ServiceProcess:
    """Start ``tenfold gateway serve`` with ``config`` (written to a temp file); wait ready."""
    handle, path = tempfile.mkstemp(prefix="tenfold-gateway-", suffix=".yaml")
    with os.fdopen(handle, "w") as out:
        yaml.safe_dump(config, out)
    cmd = [sys.executable, "-m", "tenfold", "gateway", "serve", "--config", path]
    cmd += ["--port", str(port), "--grpc-port", str(grpc_port), *args]
    return launch(cmd, "gateway", env)
