"""The snapshot cache: the latest valid snapshot per node, and a way to wait for a
newer one. It knows nothing of the server that serves it (``mesh.discovery``) or of
where snapshots come from (``mesh.store``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from mesh.snapshot import Snapshot

#: the snapshot served to a node that has none of its own
ANY_NODE = "*"


class SnapshotCache:
    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._snapshots: dict[str, Snapshot] = {}
        #: node -> monotonic time its current snapshot was published
        self._published_at: dict[str, float] = {}
        self._changed = asyncio.Event()
        self.published = 0

    def set_snapshot(self, node: str, snapshot: Snapshot) -> None:
        """Publish ``snapshot`` for ``node`` (``ANY_NODE``: every node without its own).
        It is validated first; an inconsistent one raises ``SnapshotError`` and the
        last good one stays."""
        snapshot.validate()
        self._snapshots[node] = snapshot
        self._published_at[node] = self._clock()
        self.published += 1
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def get(self, node: str) -> Snapshot | None:
        return self._snapshots.get(node, self._snapshots.get(ANY_NODE))

    def published_at(self, node: str) -> float | None:
        """When the snapshot ``node`` is served now was published (monotonic clock)."""
        key = node if node in self._snapshots else ANY_NODE
        return self._published_at.get(key)

    async def wait_change(self, node: str, current: Snapshot | None) -> Snapshot:
        """The node's snapshot once it is not ``current`` any more."""
        while True:
            changed = self._changed
            snapshot = self.get(node)
            if snapshot is not None and snapshot is not current:
                return snapshot
            await changed.wait()
