"""The Redis key layout the gateway and the stream processor share.

Every key starts with the configured prefix (``tenfold:`` by default):

==========================  ====================================================
``events``                  the event log (a stream; consumer group ``processors``)
``u:<user>:hist``           recent positives, newest last (list, at most N)
``u:<user>:seen``           recently shown items (sorted set, score = event ms)
``u:<user>:erased``         the log id of the user's last erasure (older events
                            are not applied)
``done:<log id>``           an event already applied (idempotency, with a TTL)
``ic:<bucket>``             per-item counts in a time bucket (hash ``<item>:<type>``)
``trend:<bucket>``          per-item weighted engagement in a bucket (sorted set)
``trending``                the union over the window (sorted set, best first)
==========================  ====================================================

The user id is the last part but one of its keys, so no two users share a key.
"""

from __future__ import annotations

from dataclasses import dataclass

GROUP = "processors"


@dataclass(frozen=True)
class Keys:
    prefix: str = "tenfold:"

    @property
    def stream(self) -> str:
        return f"{self.prefix}events"

    @property
    def trending(self) -> str:
        return f"{self.prefix}trending"

    def history(self, user: str) -> str:
        return f"{self.prefix}u:{user}:hist"

    def seen(self, user: str) -> str:
        return f"{self.prefix}u:{user}:seen"

    def erased(self, user: str) -> str:
        return f"{self.prefix}u:{user}:erased"

    def trend(self, bucket: int) -> str:
        return f"{self.prefix}trend:{bucket}"

    def counts(self, bucket: int) -> str:
        return f"{self.prefix}ic:{bucket}"
