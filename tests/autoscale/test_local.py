"""The local provider with real pod processes behind a real Envoy and control plane:
scaling up and down under a load loop loses no request; a CPU quota really limits a
pod; pods load only their pool's models; and the stack ``tenfold up --autoscale``
starts grows from one pod when demand rises."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from autoscale.cgroups import CgroupError, CpuLimiter
from autoscale.local import LocalProvider, ProviderStatus
from inference.launch import POD_PRELOAD, start_pod
from mesh.envoy import start_envoy
from mesh.launch import start_control_plane
from servicekit.launcher import Spawner, spawn
from servicekit.zygote import ForkServer
from tenfold.scaling import AdminSink, AutoscaleOptions
from tenfold.stack import Stack, StackOptions
from tests.gateway.conftest import wait_until
from tests.mesh.test_envoy import Edge, Load, mesh_file
from tests.models import heavy, write_model

pytestmark = [pytest.mark.integration, pytest.mark.slow]
MODELS = ["scale", "mlp", "multi_io", "auto"]


def cgroups_writable() -> bool:
    try:
        CpuLimiter(0.5, owner=f"tenfold-probe-{os.getpid()}").close()
        return True
    except CgroupError:
        return False


@pytest.fixture
def edge(standard_repo):
    control_plane = start_control_plane(mesh_file([]))
    envoy = start_envoy("tenfold-edge", "127.0.0.1", control_plane.grpc_port)
    edge = Edge(control_plane, envoy, [])
    try:
        yield edge
    finally:
        envoy.stop()
        control_plane.stop()


@pytest.fixture(scope="module")
def forks():
    """The fork server the stack starts pods from (``AutoscaleOptions.fork_server``)."""
    server = ForkServer(POD_PRELOAD).start()
    yield server
    server.close()


def provider_for(
    edge,
    repo: Path,
    limiter=None,
    spares: int = 0,
    startup_cpu: float | None = None,
    spawner: Spawner = spawn,
) -> LocalProvider:
    sink = AdminSink(edge.control_plane.http)
    return LocalProvider(
        "pods",
        repo,
        MODELS,
        sink,
        time.monotonic,
        limiter,
        spares=spares,
        startup_cpu=startup_cpu,
        spawner=spawner,
    )


def cpu_group(pid: int) -> str:
    """The path of ``pid``'s cgroup in the cpu hierarchy (v1 or v2)."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == "" or "cpu" in controllers.split(","):
            return path
    raise AssertionError(f"no cpu cgroup for {pid}")


def converge(provider: LocalProvider, desired: int, timeout: float = 90.0):
    deadline = time.monotonic() + timeout
    while True:
        status = provider.reconcile(desired)
        if status.ready == desired and status.starting == 0 and status.stopping == 0:
            return status
        assert time.monotonic() < deadline, f"not converged on {desired}: {status}"
        time.sleep(0.1)


@pytest.mark.parametrize("forked", [False, True], ids=["spawned", "forked"])
def test_the_provider_scales_real_pods_up_and_down_under_load_without_failures(
    edge, standard_repo, forks, forked
):
    provider = provider_for(edge, standard_repo, spawner=forks.spawn if forked else spawn)
    load = None
    try:
        converge(provider, 1)
        wait_until(lambda: len(edge.hosts()) == 1, "Envoy to have the first pod", 5)
        load = Load(edge)
        load.start()
        wait_until(lambda: load.ok > 30, "load on one pod")
        converge(provider, 3)
        wait_until(lambda: len(load.served) == 3, "traffic on all three pods", 10)
        converge(provider, 1)
        seen = load.ok
        wait_until(lambda: load.ok > seen + 30, "traffic after the scale-down")
        load.finish()
    finally:
        if load is not None:
            load.finish()
        provider.close()
    assert load.failed == [], load.failed[:3]
    assert provider.failed == 0
    pools = requests.get(f"http://{edge.control_plane.http}/v1/pools", timeout=5).json()
    assert pools["pools"]["pods"]["endpoints"] == []  # close() emptied the pool


def test_a_warm_spare_joins_the_pool_at_once_and_a_new_one_starts_behind_it(edge, standard_repo):
    # guards docs/autoscale.md: "a scale-up takes them at once [...] On scale-down the
    # pods that leave the pool become the spares first"
    provider = provider_for(edge, standard_repo, spares=1)
    settled = lambda ready: ProviderStatus(ready, 0, 0, 0, 1)  # noqa: E731
    try:
        wait_until(lambda: provider.reconcile(1) == settled(1), "one pod and one spare", 90)
        wait_until(lambda: len(edge.hosts()) == 1, "Envoy to have the pool's pod", 5)
        time.sleep(0.5)
        assert len(edge.hosts()) == 1  # the spare gets no traffic
        grown = provider.reconcile(3)
        # the spare is in the pool in the same call; one more starts for the pool (the
        # next spare only once the pool is whole)
        assert grown == ProviderStatus(2, 1, 0, 0, 0), grown
        wait_until(lambda: len(edge.hosts()) == 2, "Envoy to have the spare", 5)
        wait_until(lambda: provider.reconcile(3) == settled(3), "three pods and a spare", 90)
        shrunk = provider.reconcile(1)
        # a spare exists: both pods that leave the pool go (the spare stays warm)
        assert shrunk == ProviderStatus(1, 0, 2, 0, 1), shrunk
        assert edge.infer().status_code == 200
    finally:
        provider.close()
    assert provider.failed == 0


@pytest.mark.skipif(not cgroups_writable(), reason="cgroups cannot be written here (not root?)")
def test_a_pod_starts_under_the_boost_and_serves_under_its_own_quota(edge, standard_repo, forks):
    # guards docs/autoscale.md: "a starting pod runs under that quota in a second
    # subtree [...] once ready it moves to its serving cgroup under --cpu-per-pod";
    # forked, as the stack starts pods
    limiter = CpuLimiter(0.2)
    provider = provider_for(edge, standard_repo, limiter, startup_cpu=1.0, spawner=forks.spawn)
    try:
        assert provider.reconcile(1).starting == 1
        (pid,) = provider.pids()
        booting = cpu_group(pid)
        assert booting.endswith(f"/{limiter.starting.name}/pods-1"), booting
        converge(provider, 1)
        serving = cpu_group(pid)
        assert serving.endswith(f"/{limiter.subtree.name}/pods-1"), serving
        group = limiter.subtree / "pods-1"
        quota = (
            (group / "cpu.max").read_text().split()[0]
            if limiter.version == 2
            else ((group / "cpu.cfs_quota_us").read_text().strip())
        )
        assert quota == "20000"
        assert not (limiter.starting / "pods-1").exists()  # the boost's group is gone
        wait_until(lambda: len(edge.hosts()) == 1, "Envoy to have the pod", 5)
        assert edge.infer().status_code == 200
    finally:
        provider.close()
        limiter.close()
    assert provider.failed == 0
    assert not limiter.subtree.exists() and not limiter.starting.exists()


def test_pods_load_only_the_models_they_are_told_to(standard_repo):
    pod = start_pod(standard_repo, "--load-model", "scale", "--load-model", "mlp")
    try:
        index = requests.post(f"http://{pod.http}/v2/repository/index", timeout=5).json()
        assert {m["name"] for m in index} == {"mlp", "scale"}
    finally:
        pod.stop()
    cmd = [sys.executable, "-m", "tenfold", "inference", "serve"]
    cmd += ["--model-repository", str(standard_repo), "--load-model", "nope"]
    cmd += ["--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "model 'nope': --load-model: no such model" in done.stderr + done.stdout


@pytest.mark.timing
@pytest.mark.skipif(not cgroups_writable(), reason="cgroups cannot be written here (not root?)")
def test_a_cpu_quota_really_limits_a_pod(tmp_path):
    repo = tmp_path / "repo"
    write_model(repo, "heavy", heavy(width=512, layers=8), None)
    limiter = CpuLimiter(0.1)
    served = {}
    group = None
    try:
        for label in ("unlimited", "limited"):
            pod = start_pod(repo)
            if label == "limited":
                group = limiter.limit(pod.pid, "pod-limited")
                assert (group / "cgroup.procs").read_text().split() != []
                assert str(pod.pid) in (group / "cgroup.procs").read_text().split()
            body = {
                "inputs": [
                    {"name": "x", "shape": [1, 512], "datatype": "FP32", "data": [0.1] * 512}
                ]
            }
            session, count = requests.Session(), 0
            end = time.monotonic() + 2.0
            while time.monotonic() < end:
                answer = session.post(f"http://{pod.http}/v2/models/heavy/infer", json=body)
                assert answer.status_code == 200, answer.text
                count += 1
            served[label] = count
            pod.stop()
    finally:
        limiter.close()
    assert served["limited"] < 0.5 * served["unlimited"], served
    assert group is not None and not group.exists()  # removed with the subtree
    assert not limiter.subtree.exists()


def test_tenfold_up_autoscale_grows_the_pool_of_the_product_in_demand(quick_repo):
    options = StackOptions(
        quick_repo,
        port=0,
        grpc_port=0,
        drain_s=0.2,
        autoscale=AutoscaleOptions({"feed": 4, "effects": 50}, max_replicas=3, tick_s=0.5),
    )
    stack = Stack(options)
    stack.start(say=lambda *a, **k: None)
    edge = f"http://127.0.0.1:{stack.ports['http']}"
    body = {"user_id": 7, "count": 5}
    feed, effects = stack.scaled.providers["feed"], stack.scaled.providers["effects"]
    failures, ok, desired = [], 0, []
    try:
        assert feed.status().ready == 1 and effects.status().ready == 1
        # each pool's pods load only its models
        pools = requests.get(f"http://{stack.control_plane.http}/v1/pools", timeout=5).json()
        assert pools["pools"]["effects"]["models"] == ["effects_cartoon"]
        pod = pools["pools"]["effects"]["endpoints"][0]["http"]
        index = requests.post(f"http://{pod}/v2/repository/index", timeout=5).json()
        assert {m["name"] for m in index} == {"effects_cartoon"}
        session = requests.Session()
        deadline = time.monotonic() + 90
        next_tick = time.monotonic()
        while feed.status().ready < 3:
            assert time.monotonic() < deadline, f"no scale-up: desired {desired[-5:]}"
            answer = session.post(f"{edge}/v1/feed", json=body, timeout=10)
            if answer.status_code == 200:
                ok += 1
            else:
                failures.append(answer.status_code)
            if time.monotonic() >= next_tick:
                next_tick += 0.5
                decisions = {pool: d.desired for pool, d, _ in stack.scaled.tick()}
                desired.append(decisions)
            time.sleep(0.02)
        for _ in range(20):  # all three pods serve
            assert session.post(f"{edge}/v1/feed", json=body, timeout=10).status_code == 200
    finally:
        stack.stop(say=lambda *a, **k: None)
    assert failures == []
    assert max(d["feed"] for d in desired) == 3
    assert max(d["effects"] for d in desired) == 1  # no effects demand: not scaled
    assert ok > 0


def test_tenfold_up_autoscale_on_a_terminal_shows_each_pools_traffic_and_pods(quick_repo):
    # issue 16: "A live terminal view (rich) during drill and tenfold up --autoscale:
    # QPS, p99, shed and replicas per pool"; a real terminal (a pty), real stack
    import fcntl
    import pty
    import re
    import signal
    import struct
    import termios
    import threading

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 240, 0, 0))
    cmd = [sys.executable, "-m", "tenfold", "up", "--repository", str(quick_repo)]
    cmd += ["--autoscale", "--no-events", "--port", "0", "--grpc-port", "0"]
    proc = subprocess.Popen(
        cmd, stdin=slave, stdout=slave, stderr=slave, env={**os.environ, "TERM": "xterm"}
    )
    os.close(slave)
    screen: list[str] = []

    def pump() -> None:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                return
            if not chunk:
                return
            screen.append(chunk.decode(errors="replace"))

    threading.Thread(target=pump, daemon=True).start()
    text = lambda: re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", "".join(screen))  # noqa: E731

    def feed_row() -> list[str] | None:
        rows = [line for line in text().splitlines() if line.startswith("│ feed ")]
        cells = [c.strip() for c in rows[-1].split("│")[1:-1]] if rows else None
        return cells if cells and cells[1] not in ("-", "0.0") else None

    try:
        wait_until(lambda: "edge (Envoy) ready" in text(), "the stack to start", 120)
        port = int(text().split("edge (Envoy) ready: http 127.0.0.1:")[1].split(",")[0])
        session = requests.Session()
        deadline = time.monotonic() + 30
        while feed_row() is None:
            assert time.monotonic() < deadline, text()[-3000:]
            body = {"user_id": 7, "count": 5}
            answer = session.post(f"http://127.0.0.1:{port}/v1/feed", json=body, timeout=10)
            assert answer.status_code == 200
            time.sleep(0.05)
        cells = feed_row()
        assert "tenfold up --autoscale: traffic at the gateway, pods per pool" in text()
        # pool, arrivals/s, OK/s, shed/s, 5xx/s, p99 ms, desired, ready, starting, stopping
        assert float(cells[1]) > 0 and float(cells[2]) > 0 and float(cells[4]) == 0
        assert float(cells[5]) > 0 and int(cells[7]) >= 1
        assert any(line.startswith("│ effects ") for line in text().splitlines())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
