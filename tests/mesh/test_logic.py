"""The mesh's pure parts: config validation, snapshot building and consistency, the
endpoint store, and the ADS protocol of one stream (ACK/NACK by nonce), with a fake
clock and no sockets."""

from __future__ import annotations

import asyncio

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.connection_limit.v3 import connection_limit_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2,
)
from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2
from prometheus_client import CollectorRegistry

from mesh.cache import ANY_NODE, SnapshotCache
from mesh.config import Endpoint, MeshConfig, MeshConfigError, PoolConfig, load_mesh_file
from mesh.discovery import AdsStream
from mesh.metrics import MeshMetrics
from mesh.resources import all_resources
from mesh.snapshot import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    Snapshot,
    SnapshotError,
    build_snapshot,
    make_snapshot,
)
from mesh.store import EndpointStore, UnknownPool

MODELS = ["feed_ranker", "effects_cartoon"]


def config(**changes) -> MeshConfig:
    pools = {"gateway": PoolConfig(), "default": PoolConfig(models=MODELS)}
    return MeshConfig(pools=pools, **changes)


def member(port: int) -> Endpoint:
    return Endpoint(http=f"127.0.0.1:{port}", grpc=f"127.0.0.1:{port + 1}")


def unpack(snapshot, type_url, name, message):
    snapshot.of(type_url)[name].Unpack(message)
    return message


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# -- config -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (
            "pools: {gateway: {}, feed: {retry: {max_retries: -1}}}\n",
            r"pools\.feed\.retry\.max_retries",
        ),
        (
            "pools: {gateway: {}}\nroutes: [{prefix: /v1/, pool: nowhere}]\n",
            r"routes\[0\]\.pool: no pool named 'nowhere'",
        ),
        (
            "pools: {gateway: {}, a: {models: [m]}, b: {models: [m]}}\n",
            "'m' is served by pool 'a' too",
        ),
        (
            "pools: {gateway: {}}\nendpoints: {gateway: [{http: 'x:1', grpc: 'y'}]}\n",
            r"endpoints\.gateway\.0\.grpc",
        ),
        ("pools: {feed: {}}\n", "'gateway' pool"),
        (
            "listeners: {http: {port: 8080, protocol: http, colour: red}}\n",
            r"listeners\.http\.colour",
        ),
    ],
)
def test_bad_mesh_config_names_the_field(tmp_path, text, needle):
    path = tmp_path / "mesh.yaml"
    path.write_text(text)
    with pytest.raises(MeshConfigError, match=needle):
        load_mesh_file(path)


def test_the_default_mesh_file_is_valid_and_serves_the_public_ports():
    mesh = load_mesh_file(None)
    assert mesh.listeners["http"].port == 8080
    assert mesh.listeners["grpc"].port == 8081
    assert mesh.config().pool_of("anything") is None


# -- resources and snapshots ------------------------------------------------------------
def test_kserve_routes_go_straight_to_the_pool_and_the_rest_to_the_gateway():
    snapshot = build_snapshot(config(), {"default": [member(9000)]}, "1")
    routes = unpack(snapshot, ROUTE, "http", route_pb2.RouteConfiguration())
    table = [
        (r.match.path or r.match.prefix, r.route.cluster) for r in routes.virtual_hosts[0].routes
    ]
    assert table == [
        ("/v2/models/feed_ranker", "default.http"),
        ("/v2/models/feed_ranker/", "default.http"),
        ("/v2/models/effects_cartoon", "default.http"),
        ("/v2/models/effects_cartoon/", "default.http"),
        ("/", "gateway.http"),
    ]
    grpc_routes = unpack(snapshot, ROUTE, "grpc", route_pb2.RouteConfiguration())
    assert [r.route.cluster for r in grpc_routes.virtual_hosts[0].routes] == ["gateway.grpc"]
    kserve = routes.virtual_hosts[0].routes[0].route
    assert kserve.retry_policy.num_retries.value == 3  # inference calls are idempotent
    assert list(kserve.retry_policy.retriable_status_codes) == [503]


def test_without_kserve_direct_every_http_call_goes_to_the_gateway():
    snapshot = build_snapshot(config(kserve_direct=False), {}, "1")
    routes = unpack(snapshot, ROUTE, "http", route_pb2.RouteConfiguration())
    assert [r.route.cluster for r in routes.virtual_hosts[0].routes] == ["gateway.http"]


def test_clusters_carry_the_pool_policy_and_grpc_clusters_speak_http2():
    pools = {
        "gateway": PoolConfig(),
        "feed": PoolConfig(models=["m"], balancing="round_robin", connect_timeout_s=0.25),
    }
    snapshot = build_snapshot(MeshConfig(pools=pools), {}, "1")
    http = unpack(snapshot, CLUSTER, "feed.http", cluster_pb2.Cluster())
    grpc = unpack(snapshot, CLUSTER, "feed.grpc", cluster_pb2.Cluster())
    assert http.lb_policy == cluster_pb2.Cluster.ROUND_ROBIN
    assert http.connect_timeout.ToMilliseconds() == 250
    assert http.outlier_detection.consecutive_gateway_failure.value == 2
    budget = http.circuit_breakers.thresholds[0].retry_budget
    assert budget.budget_percent.value == 20.0
    assert not http.typed_extension_protocol_options
    assert "envoy.extensions.upstreams.http.v3.HttpProtocolOptions" in (
        grpc.typed_extension_protocol_options
    )


def test_assignments_hold_each_pods_port_per_protocol_and_both_addresses_as_metadata():
    snapshot = build_snapshot(config(), {"default": [member(9000), member(9010)]}, "1")
    grpc = unpack(snapshot, ENDPOINT, "default.grpc", endpoint_pb2.ClusterLoadAssignment())
    http = unpack(snapshot, ENDPOINT, "default.http", endpoint_pb2.ClusterLoadAssignment())
    ports = [e.endpoint.address.socket_address.port_value for e in grpc.endpoints[0].lb_endpoints]
    assert ports == [9001, 9011]
    ports = [e.endpoint.address.socket_address.port_value for e in http.endpoints[0].lb_endpoints]
    assert ports == [9000, 9010]
    meta = grpc.endpoints[0].lb_endpoints[1].metadata.filter_metadata["tenfold"]
    assert dict(meta) == {"http": "127.0.0.1:9010", "grpc": "127.0.0.1:9011"}


def test_edge_limits_reach_the_listeners():
    cfg = config(edge={"max_connections": 7, "max_request_bytes": 4096, "rate_limit": None})
    snapshot = build_snapshot(cfg, {}, "1")
    http = unpack(snapshot, LISTENER, "http", listener_pb2.Listener())
    names = [f.name for f in http.filter_chains[0].filters]
    assert names == [
        "envoy.filters.network.connection_limit",
        "envoy.filters.network.http_connection_manager",
    ]
    limit = connection_limit_pb2.ConnectionLimit()
    http.filter_chains[0].filters[0].typed_config.Unpack(limit)
    assert limit.max_connections.value == 7
    manager = http_connection_manager_pb2.HttpConnectionManager()
    http.filter_chains[0].filters[1].typed_config.Unpack(manager)
    assert [f.name for f in manager.http_filters] == [
        "envoy.filters.http.buffer",
        "envoy.filters.http.router",
    ]
    default = build_snapshot(config(), {}, "1")  # no body limit at the edge by default
    unpack(default, LISTENER, "http", listener_pb2.Listener()).filter_chains[0].filters[
        1
    ].typed_config.Unpack(manager)
    assert [f.name for f in manager.http_filters] == ["envoy.filters.http.router"]
    grpc = unpack(snapshot, LISTENER, "grpc", listener_pb2.Listener())
    grpc.filter_chains[0].filters[1].typed_config.Unpack(manager)
    assert manager.codec_type == manager.HTTP2
    assert "envoy.filters.http.buffer" not in [f.name for f in manager.http_filters]


def test_versions_follow_content_so_an_endpoint_change_resends_only_endpoints():
    first = build_snapshot(config(), {"default": [member(9000)]}, "1")
    again = build_snapshot(config(), {"default": [member(9000)]}, "2")
    moved = build_snapshot(config(), {"default": [member(9100)]}, "3")
    assert dict(first.versions) == dict(again.versions)
    changed = [t for t in first.versions if first.versions[t] != moved.versions[t]]
    assert changed == [ENDPOINT]


def test_an_inconsistent_snapshot_is_refused_naming_what_is_missing():
    listeners, routes, clusters, assignments = all_resources(config(), {})
    without_cluster = [c for c in clusters if c.name != "default.http"]
    with pytest.raises(
        SnapshotError, match=r"route 'kserve-feed_ranker': no cluster 'default\.http'"
    ):
        make_snapshot("1", [*without_cluster, *assignments, *listeners, *routes])
    without_assignment = [a for a in assignments if a.cluster_name != "gateway.grpc"]
    with pytest.raises(SnapshotError, match=r"cluster 'gateway\.grpc': no endpoint assignment"):
        make_snapshot("1", [*clusters, *without_assignment, *listeners, *routes])
    with pytest.raises(SnapshotError, match="listener 'grpc': no route configuration 'grpc'"):
        make_snapshot("1", [*clusters, *assignments, *listeners, routes[0]])
    with pytest.raises(SnapshotError, match="two Cluster named"):
        make_snapshot("1", [*clusters, clusters[0], *assignments, *listeners, *routes])


# -- store and cache --------------------------------------------------------------------
def test_the_store_publishes_a_new_snapshot_per_change_and_tells_followers():
    cache = SnapshotCache(Clock())
    store = EndpointStore(config(), cache)
    seen = []
    store.subscribe(lambda pool, members: seen.append((pool, len(members))))
    first = cache.get("any-node")
    store.set_endpoints("default", [member(9000), member(9000), member(9010)])
    assert cache.get("any-node") is store.snapshot is not first
    assert store.snapshot.version == "2"
    assert seen == [("default", 2)]  # the duplicate was dropped
    store.set_endpoints("default", [member(9000), member(9010)])  # no change: nothing new
    assert store.snapshot.version == "2" and seen == [("default", 2)]
    with pytest.raises(UnknownPool, match="no pool named 'nope'"):
        store.set_endpoints("nope", [])


def test_the_cache_keeps_the_last_good_snapshot_when_a_bad_one_is_set():
    cache = SnapshotCache(Clock())
    good = build_snapshot(config(), {}, "1")
    cache.set_snapshot(ANY_NODE, good)
    resources = {t: dict(r) for t, r in good.resources.items()}
    del resources[CLUSTER]["default.http"]
    bad = Snapshot("2", resources, good.versions)
    with pytest.raises(SnapshotError, match=r"no cluster 'default\.http'"):
        cache.set_snapshot(ANY_NODE, bad)
    assert cache.get("n") is good
    assert cache.published == 1


async def test_waiting_for_a_change_returns_the_next_snapshot():
    cache = SnapshotCache(Clock())
    first = build_snapshot(config(), {}, "1")
    cache.set_snapshot(ANY_NODE, first)

    waiter = asyncio.create_task(cache.wait_change("n", first))
    await asyncio.sleep(0)
    assert not waiter.done()
    second = build_snapshot(config(), {"default": [member(9000)]}, "2")
    cache.set_snapshot(ANY_NODE, second)
    assert await asyncio.wait_for(waiter, 1) is second


# -- one ADS stream ---------------------------------------------------------------------
def request(type_url, nonce="", version="", names=(), error=None, node=""):
    req = discovery_pb2.DiscoveryRequest(
        type_url=type_url, response_nonce=nonce, version_info=version, resource_names=names
    )
    if node:
        req.node.id = node
    if error is not None:
        req.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
    return req


def stream_with(snapshot, clock=None):
    metrics = MeshMetrics(CollectorRegistry())
    clock = clock or Clock()
    stream = AdsStream(metrics, clock, lambda node: 100.0)
    stream.snapshot = snapshot
    return stream, metrics


def count(metrics, name, type_name):
    return metrics.registry.get_sample_value(f"tenfold_mesh_{name}_total", {"type": type_name})


def test_a_stream_answers_wildcard_and_named_requests_then_only_changes():
    first = build_snapshot(config(), {"default": [member(9000)]}, "1")
    stream, metrics = stream_with(first)
    (clusters,) = stream.on_request(request(CLUSTER, node="edge"))
    assert stream.node == "edge"
    assert [r.type_url for r in clusters.resources] == [CLUSTER] * 4  # 2 pools x 2 ports
    (eds,) = stream.on_request(request(ENDPOINT, names=["default.grpc"]))
    assert len(eds.resources) == 1 and eds.version_info == first.versions[ENDPOINT]
    # ACKs send nothing new
    assert stream.on_request(request(CLUSTER, clusters.nonce, clusters.version_info)) == []
    assert stream.on_request(request(ENDPOINT, eds.nonce, eds.version_info, ["default.grpc"])) == []
    assert count(metrics, "acks", "Cluster") == 1
    # new names asked for: answered though the version is the same
    (more,) = stream.on_request(
        request(ENDPOINT, eds.nonce, eds.version_info, ["default.grpc", "default.http"])
    )
    assert len(more.resources) == 2
    # an endpoint change pushes endpoints only
    moved = build_snapshot(config(), {"default": [member(9100)]}, "2")
    pushed = stream.on_snapshot(moved)
    assert [r.type_url for r in pushed] == [ENDPOINT]
    assert pushed[0].nonce != more.nonce


def test_a_nack_is_counted_and_not_answered_until_the_snapshot_changes():
    clock = Clock()
    first = build_snapshot(config(), {}, "1")
    stream, metrics = stream_with(first, clock)
    (clusters,) = stream.on_request(request(CLUSTER, node="edge"))
    assert stream.on_request(request(CLUSTER, clusters.nonce, "", error="bad port")) == []
    assert count(metrics, "nacks", "Cluster") == 1
    # the same bad version is not resent when the node asks again
    assert stream.on_request(request(CLUSTER, clusters.nonce, "")) == []
    fixed = build_snapshot(config(edge={"idle_timeout_s": 5}), {}, "2")
    fixed_clusters = build_snapshot(
        MeshConfig(pools={"gateway": PoolConfig(connect_timeout_s=2)}), {}, "3"
    )
    assert stream.on_snapshot(fixed) == []  # clusters unchanged by an edge change
    (resent,) = stream.on_snapshot(fixed_clusters)
    assert resent.type_url == CLUSTER and resent.version_info != clusters.version_info


def test_a_stale_nonce_is_ignored_and_push_latency_is_measured_from_publication():
    clock = Clock()
    first = build_snapshot(config(), {}, "1")
    stream, metrics = stream_with(first, clock)
    (old,) = stream.on_request(request(ENDPOINT, names=["default.grpc"], node="edge"))
    moved = build_snapshot(config(), {"default": [member(9000)]}, "2")
    (new,) = stream.on_snapshot(moved)
    # an answer to the superseded response changes nothing
    assert stream.on_request(request(ENDPOINT, old.nonce, "", ["default.grpc"])) == []
    assert count(metrics, "acks", "ClusterLoadAssignment") is None
    clock.now = 100.25
    stream.on_request(request(ENDPOINT, new.nonce, new.version_info, ["default.grpc"]))
    labels = {"type": "ClusterLoadAssignment"}
    total = metrics.registry.get_sample_value("tenfold_mesh_push_duration_seconds_sum", labels)
    assert total == pytest.approx(0.25)
