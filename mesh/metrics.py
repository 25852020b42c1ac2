"""Prometheus metrics of the control plane (``tenfold_mesh_*``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_PUSH = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class MeshMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.snapshots = Counter(
            "tenfold_mesh_snapshots_published", "Snapshots published to the cache.", registry=r
        )
        self.rejected = Counter(
            "tenfold_mesh_snapshots_rejected",
            "Snapshots refused before publishing (inconsistent or invalid).",
            registry=r,
        )
        self.responses = Counter(
            "tenfold_mesh_responses", "Discovery responses sent, by type.", ("type",), registry=r
        )
        self.acks = Counter(
            "tenfold_mesh_acks", "Responses a node accepted, by type.", ("type",), registry=r
        )
        self.nacks = Counter(
            "tenfold_mesh_nacks", "Responses a node rejected, by type.", ("type",), registry=r
        )
        self.connected = Gauge(
            "tenfold_mesh_connected_streams", "ADS streams open now.", registry=r
        )
        self.nodes = Gauge(
            "tenfold_mesh_connected_nodes", "Distinct nodes with an ADS stream open.", registry=r
        )
        self.push = Histogram(
            "tenfold_mesh_push_duration_seconds",
            "From a snapshot's publication to a node's ACK of it, by type.",
            ("type",),
            buckets=_PUSH,
            registry=r,
        )
        self.endpoints = Gauge(
            "tenfold_mesh_pool_endpoints", "Endpoints per pool.", ("pool",), registry=r
        )


def short_type(type_url: str) -> str:
    """``...v3.ClusterLoadAssignment`` -> ``ClusterLoadAssignment`` (a label value)."""
    return type_url.rsplit(".", 1)[-1]
