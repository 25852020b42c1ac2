"""Load shapes as pure functions of the run time (no locust import, so testable)."""

from __future__ import annotations


def stage_users(run_time: float, base: int, stage_s: float) -> int | None:
    """The surge: ``base`` users, then 10x, then 100x, ``stage_s`` seconds each; None after."""
    stage = int(run_time // stage_s)
    return None if stage > 2 else base * 10**stage
