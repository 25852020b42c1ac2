"""The machine-readable ready file: what a launcher reads instead of parsing log text.

A service started with ``--ready-file PATH`` writes one JSON document there, replaced
atomically at each change of state::

    {"format": "tenfold-ready/1", "service": "inference", "pid": 4242,
     "state": "listening" | "ready" | "draining", "host": "127.0.0.1",
     "ports": {"http": 8000, "grpc": 8001, "metrics": 8002}}
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

FORMAT = "tenfold-ready/1"
STATES = ("listening", "ready", "draining")


@dataclass(frozen=True)
class ReadyState:
    service: str
    pid: int
    state: str
    host: str = "127.0.0.1"
    ports: Mapping[str, int] = field(default_factory=dict)

    def to_json(self) -> str:
        doc = {"format": FORMAT, "service": self.service, "pid": self.pid}
        doc |= {"state": self.state, "host": self.host, "ports": dict(self.ports)}
        return json.dumps(doc)


def write_ready(path: Path | None, state: ReadyState) -> None:
    """Replace ``path`` with ``state`` atomically (a reader never sees half a file)."""
    if path is None:
        return
    if state.state not in STATES:
        raise ValueError(f"ready state must be one of {STATES}, not {state.state!r}")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(state.to_json(), encoding="utf-8")
    os.replace(tmp, path)


def read_ready(path: Path) -> ReadyState | None:
    """The state written at ``path``, or None while there is none yet."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    if doc.get("format") != FORMAT:
        raise ValueError(f"{path}: not a tenfold ready file (format {doc.get('format')!r})")
    ports = {str(k): int(v) for k, v in doc["ports"].items()}
    return ReadyState(doc["service"], int(doc["pid"]), doc["state"], doc["host"], ports)
