"""A/B assignment: a stable hash of the user id into 10,000 buckets."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from gateway.settings import ExperimentSettings

BUCKETS = 10_000


def bucket(key: str) -> int:
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


@dataclass(frozen=True)
class Arm:
    experiment: str  # "" when no experiment applies
    arm: str  # "control" | "variant"
    ranker_model: str | None = None
    ranker_version: str | None = None

    @property
    def label(self) -> str:
        return f"{self.experiment}:{self.arm}" if self.experiment else ""


CONTROL = Arm("", "control")


def assign(experiments: list[ExperimentSettings], user_id: str) -> Arm:
    """The arm of ``user_id``. Experiments take consecutive slices of one hash space, so
    a user is in the variant of at most one; everyone else is in the control."""
    point = bucket(f"tenfold-ab:{user_id}")
    start = 0.0
    for exp in experiments:
        end = start + exp.percent * BUCKETS / 100
        if start <= point < end:
            return Arm(exp.name, "variant", exp.ranker_model, exp.ranker_version)
        start = end
    first = experiments[0].name if experiments else ""
    return Arm(first, "control") if first else CONTROL
