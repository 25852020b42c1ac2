"""The commands the Kubernetes edge runs (k8s/base/edge.yaml), on loopback: the control
plane's metrics-only listener, ``tenfold mesh envoy`` (the wheel's Envoy with the
bootstrap, replacing the command's process) and ``tenfold mesh drain`` (preStop)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import requests
import yaml

from mesh.envoy import EnvoyProcess
from servicekit.launcher import free_port, launch, spawn
from tests.mesh.test_envoy import mesh_file

pytestmark = [pytest.mark.integration, pytest.mark.slow]
TENFOLD = [sys.executable, "-m", "tenfold", "mesh"]


@pytest.fixture
def control_plane(tmp_path):
    config = tmp_path / "mesh.yaml"
    config.write_text(yaml.safe_dump(mesh_file([])))
    cmd = [*TENFOLD, "serve", f"--config={config}", "--xds-port=0", "--admin-port=0"]
    plane = launch([*cmd, "--metrics-port=0"], "mesh")
    yield plane
    plane.stop()


def test_the_metrics_listener_serves_metrics_and_health_only(control_plane):
    metrics = f"http://127.0.0.1:{control_plane.ports['metrics']}"
    assert "tenfold_mesh_pool_endpoints" in requests.get(f"{metrics}/metrics", timeout=5).text
    assert requests.get(f"{metrics}/healthz", timeout=5).status_code == 200
    # the admin API is not there: nobody reaching this port changes a pool
    body = {"endpoints": []}
    assert requests.put(f"{metrics}/v1/pools/pods/endpoints", json=body, timeout=5).status_code in (
        404,
        405,
    )
    assert requests.get(f"{metrics}/v1/pools", timeout=5).status_code == 404
    assert "metrics=127.0.0.1:" in control_plane.output()


def test_mesh_envoy_serves_the_control_planes_listeners_and_mesh_drain_drains_them(
    control_plane, tmp_path
):
    admin_port = free_port()
    cmd = [*TENFOLD, "envoy", f"--xds=127.0.0.1:{control_plane.grpc_port}"]
    cmd += [f"--admin-port={admin_port}", "--concurrency=1", f"--workdir={tmp_path}"]
    cmd += ["--drain-time-s=1"]
    envoy = EnvoyProcess(spawn(cmd, "envoy"), tmp_path, admin_port)
    try:
        port = envoy.wait_listeners(["http", "grpc"])["http"]
        # the gateway pool is empty: Envoy itself answers, with no healthy upstream
        answer = requests.get(f"http://127.0.0.1:{port}/v1/effects", timeout=5)
        assert answer.status_code == 503 and answer.headers["server"] == "envoy"

        assert answer.headers.get("connection") != "close"
        # drained (the drain time is 1 s here): the listeners take no new connection
        drain = [*TENFOLD, "drain", f"--admin-port={admin_port}", "--wait-s=1.5"]
        done = subprocess.run(drain, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.1:{port}/v1/effects", timeout=5)
        assert envoy.admin("/ready").strip() == "LIVE"  # Envoy itself still runs
    finally:
        envoy.stop()
    # no Envoy there: the hook says so and fails
    done = subprocess.run(
        [*TENFOLD, "drain", f"--admin-port={admin_port}", "--wait-s=0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1 and "not draining" in done.stderr


@pytest.mark.parametrize("command", ["envoy", "bootstrap"])
def test_mesh_envoy_and_bootstrap_refuse_a_bad_xds_address(command):
    done = subprocess.run([*TENFOLD, command, "--xds=nowhere"], capture_output=True, text=True)
    assert done.returncode == 2 and "expected HOST:PORT" in done.stderr
