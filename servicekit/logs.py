"""Logging and the one-line status messages every service prints."""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: str = "info") -> None:
    logging.basicConfig(level=level.upper(), format=FORMAT)


def say(service: str, text: str, error: bool = False) -> None:
    """``tenfold <service>: <text>`` on stdout (or stderr), flushed at once."""
    print(f"tenfold {service}: {text}", file=sys.stderr if error else sys.stdout, flush=True)
