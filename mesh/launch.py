"""Start the control plane as a child process (``python -m tenfold mesh serve``) with
a generated mesh file; its ports come from its ready file. The public way for tests
and the local stack to run one."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import urllib.request

import yaml

from servicekit.launcher import ServiceProcess, launch


def start_control_plane(mesh: dict, *, xds_port: int = 0, admin_port: int = 0) -> ServiceProcess:
    """Start ``tenfold mesh serve`` with the mesh file ``mesh``; wait until ready.
    Ports: ``grpc`` is xDS, ``http`` the admin API."""
    handle, path = tempfile.mkstemp(prefix="tenfold-mesh-", suffix=".yaml")
    with os.fdopen(handle, "w") as out:
        yaml.safe_dump(mesh, out)
    cmd = [sys.executable, "-m", "tenfold", "mesh", "serve", "--config", path]
    cmd += ["--xds-port", str(xds_port), "--admin-port", str(admin_port)]
    return launch(cmd, "mesh")


def put_endpoints(admin: str, pool: str, endpoints: list[dict], timeout: float = 5.0) -> dict:
    """``PUT /v1/pools/{pool}/endpoints`` on the admin API at ``admin`` (host:port)."""
    body = json.dumps({"endpoints": endpoints}).encode()
    request = urllib.request.Request(
        f"http://{admin}/v1/pools/{pool}/endpoints",
        data=body,
        method="PUT",
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        return json.loads(answer.read())
