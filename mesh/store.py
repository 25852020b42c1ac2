"""The one source of truth for each pool's endpoints: changing a set builds a new
snapshot from the mesh config and publishes it (Envoy and the gateways follow it over
ADS). The autoscaler and the admin API both change endpoints here."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType

from mesh.cache import ANY_NODE, SnapshotCache
from mesh.config import Endpoint, MeshConfig
from mesh.snapshot import Snapshot, build_snapshot


class UnknownPool(KeyError):
    """No pool of that name in the mesh config."""

    def __str__(self) -> str:
        return f"no pool named {self.args[0]!r}"


class EndpointStore:
    def __init__(self, config: MeshConfig, cache: SnapshotCache) -> None:
        self.config = config
        self._cache = cache
        self._sets: dict[str, tuple[Endpoint, ...]] = {pool: () for pool in config.pools}
        self._version = 0
        self._listeners: list[Callable[[str, tuple[Endpoint, ...]], None]] = []
        self.snapshot = self._publish()

    @property
    def version(self) -> int:
        return self._version

    def endpoints(self) -> Mapping[str, tuple[Endpoint, ...]]:
        return MappingProxyType(self._sets)

    def set_endpoints(self, pool: str, endpoints: Iterable[Endpoint]) -> Snapshot:
        """Replace ``pool``'s endpoint set (duplicates dropped, order kept) and publish."""
        if pool not in self._sets:
            raise UnknownPool(pool)
        members = tuple(dict.fromkeys(endpoints))
        if members == self._sets[pool]:
            return self.snapshot
        previous = self._sets[pool]
        self._sets[pool] = members
        try:
            self.snapshot = self._publish()
        except Exception:
            self._sets[pool] = previous
            raise
        for listener in self._listeners:
            listener(pool, members)
        return self.snapshot

    def subscribe(self, listener: Callable[[str, tuple[Endpoint, ...]], None]) -> None:
        """Call ``listener(pool, endpoints)`` after every change (in-process followers)."""
        self._listeners.append(listener)

    def _publish(self) -> Snapshot:
        snapshot = build_snapshot(self.config, self._sets, str(self._version + 1))
        self._cache.set_snapshot(ANY_NODE, snapshot)
        self._version += 1
        return snapshot
