"""An immutable, versioned snapshot of what one Envoy node is served, checked for
consistency before anyone may publish it.

Resources are kept packed (``google.protobuf.Any``), by type URL and name. Each type
has its own version, a digest of its resources: an endpoint change re-sends only the
endpoint assignments, and the same content always has the same version.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2,
)
from google.protobuf import any_pb2

from mesh.config import Endpoint, MeshConfig
from mesh.resources import all_resources

LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
#: the order in which changes are pushed: clusters before the endpoints they need,
#: listeners before the routes they name (Envoy's "make before break")
PUSH_ORDER = (CLUSTER, ENDPOINT, LISTENER, ROUTE)
_NAME_OF = {
    LISTENER: lambda m: m.name,
    ROUTE: lambda m: m.name,
    CLUSTER: lambda m: m.name,
    ENDPOINT: lambda m: m.cluster_name,
}


class SnapshotError(ValueError):
    """The snapshot is inconsistent; the message names the resource and what it lacks."""


@dataclass(frozen=True)
class Snapshot:
    version: str
    #: type URL -> resource name -> packed resource
    resources: Mapping[str, Mapping[str, any_pb2.Any]] = field(repr=False)
    #: type URL -> the version of that type's resources (a digest)
    versions: Mapping[str, str] = field(repr=False)

    def of(self, type_url: str) -> Mapping[str, any_pb2.Any]:
        return self.resources.get(type_url, {})

    def validate(self) -> None:
        """Raise SnapshotError unless every reference resolves: each listener's route
        configuration and each route's cluster exist, and each EDS cluster has its
        endpoint assignment."""
        clusters = {n: _unpack(a, cluster_pb2.Cluster()) for n, a in self.of(CLUSTER).items()}
        for name, packed in self.of(LISTENER).items():
            for route_name in _route_names(_unpack(packed, listener_pb2.Listener())):
                if route_name not in self.of(ROUTE):
                    raise SnapshotError(f"listener {name!r}: no route configuration {route_name!r}")
        for name, packed in self.of(ROUTE).items():
            config = _unpack(packed, route_pb2.RouteConfiguration())
            for host in config.virtual_hosts:
                for route in host.routes:
                    target = route.route.cluster
                    if route.HasField("route") and target not in clusters:
                        raise SnapshotError(
                            f"route configuration {name!r}, route {route.name!r}: "
                            f"no cluster {target!r}"
                        )
        for name, config in clusters.items():
            if config.type == cluster_pb2.Cluster.EDS:
                wanted = config.eds_cluster_config.service_name or name
                if wanted not in self.of(ENDPOINT):
                    raise SnapshotError(f"cluster {name!r}: no endpoint assignment {wanted!r}")


def _unpack(packed: any_pb2.Any, message):
    packed.Unpack(message)
    return message


def _route_names(listener: listener_pb2.Listener) -> list[str]:
    names = []
    for chain in listener.filter_chains:
        for network_filter in chain.filters:
            if network_filter.typed_config.Is(
                http_connection_manager_pb2.HttpConnectionManager.DESCRIPTOR
            ):
                manager = _unpack(
                    network_filter.typed_config, http_connection_manager_pb2.HttpConnectionManager()
                )
                if manager.HasField("rds"):
                    names.append(manager.rds.route_config_name)
    return names


def make_snapshot(version: str, messages: Iterable) -> Snapshot:
    """A snapshot of ``messages`` (listeners, routes, clusters, assignments), validated."""
    by_type: dict[str, dict[str, any_pb2.Any]] = {t: {} for t in PUSH_ORDER}
    for message in messages:
        packed = any_pb2.Any()
        packed.Pack(message)
        if packed.type_url not in _NAME_OF:
            raise SnapshotError(f"not an xDS resource type: {packed.type_url}")
        name = _NAME_OF[packed.type_url](message)
        if name in by_type[packed.type_url]:
            raise SnapshotError(f"two {packed.type_url.rsplit('.', 1)[-1]} named {name!r}")
        by_type[packed.type_url][name] = packed
    versions = {t: _digest(resources) for t, resources in by_type.items()}
    snapshot = Snapshot(
        version,
        MappingProxyType({t: MappingProxyType(r) for t, r in by_type.items()}),
        MappingProxyType(versions),
    )
    snapshot.validate()
    return snapshot


def _digest(resources: Mapping[str, any_pb2.Any]) -> str:
    sha = hashlib.sha256()
    for name in sorted(resources):
        sha.update(name.encode())
        sha.update(resources[name].SerializeToString(deterministic=True))
    return sha.hexdigest()[:16]


def build_snapshot(
    config: MeshConfig, endpoints: Mapping[str, Iterable[Endpoint]], version: str
) -> Snapshot:
    listeners, routes, clusters, assignments = all_resources(config, endpoints)
    return make_snapshot(version, [*clusters, *assignments, *listeners, *routes])
