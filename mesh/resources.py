"""Envoy's xDS resources (listeners, routes, clusters, endpoint assignments) built from
the mesh config and the pools' endpoint sets, as ``xds-protos`` messages.

Listeners, routes and clusters change only with the config; they are written as the
JSON form of Envoy's API (readable next to Envoy's docs) and parsed once. Endpoint
assignments change with every scale step, so they are built as messages directly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

# imported for their descriptors: the typed configs below name these message types
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.buffer.v3 import buffer_pb2  # noqa: F401
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2  # noqa: F401
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401
from envoy.extensions.filters.network.connection_limit.v3 import (  # noqa: F401
    connection_limit_pb2,
)
from envoy.extensions.filters.network.http_connection_manager.v3 import (  # noqa: F401
    http_connection_manager_pb2,
)
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2  # noqa: F401
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2  # noqa: F401
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401
from google.protobuf import json_format

from mesh.config import GATEWAY_POOL, Endpoint, Listener, MeshConfig, PoolConfig, Route, Tls

TYPE = "type.googleapis.com/"
CONNECTION_LIMIT = TYPE + "envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit"
UPSTREAM_HEADER = "x-tenfold-upstream"
#: the endpoint metadata namespace with a pod's two addresses
METADATA = "tenfold"
ADS = {"ads": {}, "resource_api_version": "V3"}


def cluster_name(pool: str, protocol: str) -> str:
    """Each pool is two clusters over the same endpoints: its HTTP and its gRPC ports."""
    return f"{pool}.{protocol}"


def _seconds(value: float) -> str:
    return f"{value:.3f}s"


def _parse(doc: dict, message):
    return json_format.ParseDict(doc, message)


# -- clusters ---------------------------------------------------------------------------
def cluster(pool: str, protocol: str, config: PoolConfig) -> cluster_pb2.Cluster:
    name = cluster_name(pool, protocol)
    retry = config.retry
    doc = {
        "name": name,
        "type": "EDS",
        "eds_cluster_config": {"eds_config": ADS, "service_name": name},
        "connect_timeout": _seconds(config.connect_timeout_s),
        "lb_policy": config.balancing.upper(),
        "outlier_detection": {
            "consecutive_5xx": config.outlier_detection.consecutive_5xx,
            "consecutive_gateway_failure": config.outlier_detection.consecutive_gateway_failure,
            "enforcing_consecutive_gateway_failure": 100,
            "interval": _seconds(config.outlier_detection.interval_s),
            "base_ejection_time": _seconds(config.outlier_detection.base_ejection_time_s),
            "max_ejection_percent": config.outlier_detection.max_ejection_percent,
        },
        "circuit_breakers": {
            "thresholds": [
                {
                    "max_connections": config.circuit_breakers.max_connections,
                    "max_pending_requests": config.circuit_breakers.max_pending_requests,
                    "max_requests": config.circuit_breakers.max_requests,
                    "retry_budget": {
                        "budget_percent": {"value": retry.budget_percent},
                        "min_retry_concurrency": retry.min_retry_concurrency,
                    },
                }
            ]
        },
    }
    if protocol == "grpc":
        doc["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": TYPE + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    return _parse(doc, cluster_pb2.Cluster())


def load_assignment(name: str, protocol: str, members: Iterable[Endpoint]):
    """The endpoints of cluster ``name`` at their ``protocol`` port (built directly: this
    changes on every scale step). Each carries both its addresses as metadata
    (``tenfold: {http, grpc}``): a gateway following the gRPC cluster learns the HTTP
    address of the same pod from it."""
    assignment = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    group = assignment.endpoints.add()
    for member in members:
        host, port = member.split(protocol)
        lb = group.lb_endpoints.add()
        socket = lb.endpoint.address.socket_address
        socket.address, socket.port_value = host, port
        lb.metadata.filter_metadata[METADATA].update({"http": member.http, "grpc": member.grpc})
    return assignment


# -- routes -----------------------------------------------------------------------------
def _action(cluster: str, timeout_s: float, retry: PoolConfig | None, grpc: bool) -> dict:
    action: dict = {"cluster": cluster, "timeout": _seconds(timeout_s)}
    if grpc and timeout_s:
        # a client's grpc-timeout is honoured up to the route's timeout
        action["max_stream_duration"] = {"grpc_timeout_header_max": _seconds(timeout_s)}
    if retry is not None:
        policy = retry.retry
        action["retry_policy"] = {
            "retry_on": policy.retry_on,
            "num_retries": policy.max_retries,
            "retry_host_predicate": [
                {
                    "name": "envoy.retry_host_predicates.previous_hosts",
                    "typed_config": {
                        "@type": TYPE
                        + "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
                    },
                }
            ],
            "host_selection_retry_max_attempts": 5,
            "retriable_status_codes": policy.retriable_status_codes,
        }
        if policy.per_try_timeout_s:
            action["retry_policy"]["per_try_timeout"] = _seconds(policy.per_try_timeout_s)
    return action


def kserve_routes(config: MeshConfig) -> list[dict]:
    """``/v2/models/{model}[/...]`` straight to the pool serving the model."""
    routes = []
    for pool, pool_config in config.pools.items():
        if pool == GATEWAY_POOL:
            continue
        for model in pool_config.models:
            action = _action(cluster_name(pool, "http"), 30.0, pool_config, grpc=False)
            for match in ({"path": f"/v2/models/{model}"}, {"prefix": f"/v2/models/{model}/"}):
                routes.append({"name": f"kserve-{model}", "match": match, "route": action})
    return routes


def route_configuration(config: MeshConfig, listener: str) -> route_pb2.RouteConfiguration:
    grpc = config.listeners[listener].protocol == "grpc"
    routes = kserve_routes(config) if (config.kserve_direct and not grpc) else []
    for i, route in enumerate(r for r in config.routes if r.listener == listener):
        routes.append(_route(config, route, i, grpc))
    host: dict = {"name": listener, "domains": ["*"], "routes": routes}
    if config.upstream_header:
        header = {"key": UPSTREAM_HEADER, "value": "%UPSTREAM_REMOTE_ADDRESS%"}
        host["response_headers_to_add"] = [{"header": header}]
    return _parse({"name": listener, "virtual_hosts": [host]}, route_pb2.RouteConfiguration())


def _route(config: MeshConfig, route: Route, index: int, grpc: bool) -> dict:
    pool = config.pools[route.pool]
    protocol = "grpc" if grpc else "http"
    action = _action(
        cluster_name(route.pool, protocol), route.timeout_s, pool if route.retry else None, grpc
    )
    return {"name": f"route-{index}", "match": {"prefix": route.prefix}, "route": action}


# -- listeners --------------------------------------------------------------------------
def listener(config: MeshConfig, name: str, spec: Listener) -> listener_pb2.Listener:
    edge = config.edge
    grpc = spec.protocol == "grpc"
    filters: list[dict] = []
    if edge.rate_limit is not None:
        filters.append(_rate_limit(name, edge.rate_limit.requests_per_s, edge.rate_limit.burst))
    if not grpc and edge.max_request_bytes:  # gRPC streams are not buffered whole
        filters.append(
            {
                "name": "envoy.filters.http.buffer",
                "typed_config": {
                    "@type": TYPE + "envoy.extensions.filters.http.buffer.v3.Buffer",
                    "max_request_bytes": edge.max_request_bytes,
                },
            }
        )
    filters.append(
        {
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": TYPE + "envoy.extensions.filters.http.router.v3.Router"},
        }
    )
    manager = {
        "@type": TYPE
        + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": name,
        "codec_type": "HTTP2" if grpc else "AUTO",
        "rds": {"config_source": ADS, "route_config_name": name},
        "http_filters": filters,
        "max_request_headers_kb": edge.max_request_headers_kb,
        "request_headers_timeout": _seconds(edge.request_headers_timeout_s),
        "stream_idle_timeout": _seconds(edge.stream_idle_timeout_s),
        "common_http_protocol_options": {"idle_timeout": _seconds(edge.idle_timeout_s)},
        "use_remote_address": True,
    }
    chain: dict = {}
    if spec.tls is not None:
        chain["transport_socket"] = _tls(spec.tls, grpc)
    doc = {
        "name": name,
        "address": {"socket_address": {"address": spec.address, "port_value": spec.port}},
        "filter_chains": [
            {
                **chain,
                "filters": [
                    {
                        "name": "envoy.filters.network.connection_limit",
                        "typed_config": {
                            "@type": CONNECTION_LIMIT,
                            "stat_prefix": f"{name}_connections",
                            "max_connections": edge.max_connections,
                        },
                    },
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": manager,
                    },
                ],
            }
        ],
    }
    return _parse(doc, listener_pb2.Listener())


def _tls(tls: Tls, grpc: bool) -> dict:
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": TYPE + "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "common_tls_context": {
                "tls_certificates": [
                    {
                        "certificate_chain": {"filename": tls.cert_file},
                        "private_key": {"filename": tls.key_file},
                    }
                ],
                "alpn_protocols": ["h2"] if grpc else ["h2", "http/1.1"],
            },
        },
    }


def _rate_limit(name: str, per_s: float, burst: int) -> dict:
    # a token bucket of `burst` tokens, refilled in 100 ms steps
    per_fill = max(1, round(per_s / 10))
    fill_ms = round(1000 * per_fill / per_s)
    return {
        "name": "envoy.filters.http.local_ratelimit",
        "typed_config": {
            "@type": TYPE + "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
            "stat_prefix": f"{name}_rate_limit",
            "token_bucket": {
                "max_tokens": burst,
                "tokens_per_fill": per_fill,
                "fill_interval": f"{fill_ms / 1000:.3f}s",
            },
            "filter_enabled": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}},
            "filter_enforced": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}},
        },
    }


def all_resources(config: MeshConfig, endpoints: Mapping[str, Iterable[Endpoint]]):
    """(listeners, routes, clusters, assignments) for ``config`` and the endpoint sets."""
    listeners = [listener(config, name, spec) for name, spec in config.listeners.items()]
    routes = [route_configuration(config, name) for name in config.listeners]
    clusters, assignments = [], []
    for pool, pool_config in config.pools.items():
        members = list(endpoints.get(pool, ()))
        for protocol in ("http", "grpc"):
            clusters.append(cluster(pool, protocol, pool_config))
            assignments.append(load_assignment(cluster_name(pool, protocol), protocol, members))
    return listeners, routes, clusters, assignments
