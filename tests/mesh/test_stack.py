"""The stack ``tenfold up`` runs (control plane, a pod of the quick default models, the
gateway following the mesh, Envoy at the edge), and a control plane run in-process so
a test can publish a snapshot Envoy must refuse."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys

import grpc
import numpy as np
import pytest
import requests
import tritonclient.http as thttp

from inference.launch import start_pod
from mesh.config import load_mesh_file
from mesh.envoy import start_envoy
from mesh.launch import put_endpoints
from mesh.resources import all_resources
from mesh.service import MeshService, MeshSettings
from mesh.snapshot import LISTENER, make_snapshot
from protos.tenfold.v1 import gateway_pb2 as pb
from protos.tenfold.v1 import gateway_pb2_grpc as pb_grpc
from tenfold.stack import POD_POOL, Stack, StackOptions
from tests.gateway.conftest import jpeg, wait_until
from tests.mesh.test_envoy import INFER, mesh_file

pytestmark = [pytest.mark.integration, pytest.mark.slow]
FEED = {"user_id": 42, "count": 10, "context": {"hour": 20, "device": "ios"}}


@pytest.fixture(scope="module")
def stack(quick_repo, tmp_path_factory):
    state = tmp_path_factory.mktemp("redis")
    running = Stack(StackOptions(quick_repo, port=0, grpc_port=0, drain_s=0.2, state_dir=state))
    running.start(say=lambda *a, **k: None)
    yield running
    running.stop(say=lambda *a, **k: None)


def test_events_through_the_edge_reach_the_next_feed(stack):
    # guards docs/events.md: "tenfold up starts a local Redis and one stream processor"
    edge = f"http://127.0.0.1:{stack.ports['http']}"
    assert stack.redis is not None and stack.processor is not None
    user = "1234"
    liked = [{"user_id": user, "item_id": i, "type": "like"} for i in (11, 12)]
    answer = requests.post(f"{edge}/v1/events", json={"events": liked}, timeout=10)
    assert answer.status_code == 202, answer.text
    page = wait_until(
        lambda: (
            (p := requests.post(f"{edge}/v1/feed", json={"user_id": user}, timeout=10).json())
            and p["history_source"] == "state"
            and p
        ),
        "the liked items as the user's history",
        timeout=15,
    )
    assert page["state"] == "ok" and len(page["items"]) == 20
    erased = requests.delete(f"{edge}/v1/users/{user}/state", timeout=10)
    assert erased.status_code == 200
    again = requests.post(f"{edge}/v1/feed", json={"user_id": user}, timeout=10).json()
    assert again["history_source"] == "none"


def test_feed_effects_and_kserve_answer_through_envoy_as_they_do_directly(stack):
    edge = f"http://127.0.0.1:{stack.ports['http']}"
    gateway = f"http://{stack.gateway.http}"
    pod = stack.pods[0]
    through = requests.post(f"{edge}/v1/feed", json=FEED, timeout=10)
    direct = requests.post(f"{gateway}/v1/feed", json=FEED, timeout=10)
    assert through.status_code == direct.status_code == 200
    assert through.headers["server"] == "envoy"
    assert through.json()["items"] == direct.json()["items"]
    assert len(through.json()["items"]) == 10

    image = jpeg(96, 80)
    params = {"size": 256}
    headers = {"content-type": "image/jpeg"}
    effect = [
        requests.post(f"{base}/v1/effects/cartoon", data=image, params=params, headers=headers)
        for base in (edge, gateway)
    ]
    assert effect[0].status_code == effect[1].status_code == 200
    assert effect[0].content == effect[1].content

    ids = np.arange(1, 9, dtype=np.int64).reshape(1, 8)
    outputs = []
    for address in (f"127.0.0.1:{stack.ports['http']}", pod.http):
        client = thttp.InferenceServerClient(address)
        metadata = client.get_model_metadata("feed_ranker")
        inputs = []
        for spec in metadata["inputs"]:
            shape = [1, *(abs(d) for d in spec["shape"][1:])]
            tensor = thttp.InferInput(spec["name"], shape, spec["datatype"])
            tensor.set_data_from_numpy(np.ones(shape, dtype=np.int64) % ids.max())
            inputs.append(tensor)
        result = client.infer("feed_ranker", inputs)
        outputs.append(result.as_numpy(metadata["outputs"][0]["name"]))
        client.close()
    np.testing.assert_array_equal(outputs[0], outputs[1])

    with grpc.insecure_channel(f"127.0.0.1:{stack.ports['grpc']}") as channel:
        answer = pb_grpc.FeedStub(channel).GetFeed(
            pb.FeedRequest(user_id="42", count=3), timeout=30
        )
    assert len(answer.items) == 3


def test_the_gateway_follows_the_pool_the_control_plane_holds(stack):
    edge = f"http://127.0.0.1:{stack.ports['http']}"
    admin = stack.control_plane.http
    pod = stack.pods[0]
    try:
        put_endpoints(admin, POD_POOL, [])
        wait_until(
            lambda: requests.post(f"{edge}/v1/feed", json=FEED, timeout=10).status_code == 503,
            "the gateway to drop the pod",
            2,
        )
    finally:
        put_endpoints(admin, POD_POOL, [pod.endpoint])
    wait_until(
        lambda: requests.post(f"{edge}/v1/feed", json=FEED, timeout=10).status_code == 200,
        "the gateway to take the pod back",
        2,
    )


async def test_a_bad_snapshot_is_nacked_and_the_last_good_one_keeps_serving(standard_repo):
    pod = await asyncio.to_thread(start_pod, standard_repo)
    mesh = load_mesh_file(None, mesh_file([pod.endpoint]))
    service = MeshService(mesh, MeshSettings(xds_port=0, admin_port=0))
    ports = await service.start()
    envoy = await asyncio.to_thread(start_envoy, "tenfold-edge", "127.0.0.1", ports["grpc"])

    def nacks() -> float:
        value = service.metrics.registry.get_sample_value(
            "tenfold_mesh_nacks_total", {"type": "Listener"}
        )
        return value or 0.0

    async def infer() -> int:
        url = f"http://127.0.0.1:{edge_port}/v2/models/scale/infer"
        answer = await asyncio.to_thread(requests.post, url, json=INFER, timeout=10)
        return answer.status_code

    async def eventually(condition, what: str) -> None:
        for _ in range(200):
            if condition():
                return
            await asyncio.sleep(0.025)
        raise AssertionError(f"timed out waiting for {what}")

    try:
        edge_port = (await asyncio.to_thread(envoy.wait_listeners, ["http", "grpc"]))["http"]
        assert await infer() == 200
        config, endpoints = service.store.config, service.store.endpoints()
        listeners, routes, clusters, assignments = all_resources(config, endpoints)
        listeners[0].address.socket_address.port_value = 70000  # Envoy must refuse it
        bad = make_snapshot("bad", [*clusters, *assignments, *listeners, *routes])
        service.cache.set_snapshot("tenfold-edge", bad)
        await eventually(lambda: nacks() == 1, "Envoy's NACK")
        assert service.discovery.nodes()["tenfold-edge"]["Listener"]["acked"] != ""
        assert await infer() == 200  # the last good listener still serves

        fixed = config.model_copy(
            update={"edge": config.edge.model_copy(update={"idle_timeout_s": 30})}
        )
        listeners, routes, clusters, assignments = all_resources(fixed, endpoints)
        good = make_snapshot("fixed", [*clusters, *assignments, *listeners, *routes])
        service.cache.set_snapshot("tenfold-edge", good)
        state = lambda: service.discovery.nodes()["tenfold-edge"]["Listener"]  # noqa: E731
        await eventually(
            lambda: state()["acked"] == good.versions[LISTENER],
            "Envoy to accept the fixed listeners",
        )
        assert state()["nacked"] == bad.versions[LISTENER]
        assert nacks() == 1
        assert await infer() == 200
    finally:
        await asyncio.to_thread(envoy.stop)
        await service.close()
        await asyncio.to_thread(pod.stop)


def tenfold_up(repo, *args: str) -> subprocess.Popen:
    """``tenfold up`` on free ports, its output (stdout and stderr) as text lines."""
    cmd = [sys.executable, "-m", "tenfold", "up", "--repository", str(repo), *args]
    return subprocess.Popen(
        [*cmd, "--port", "0", "--grpc-port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def edge_port(proc: subprocess.Popen, lines: list[str]) -> int:
    """Read ``proc``'s output into ``lines`` until the edge is ready; its HTTP port."""
    for line in proc.stdout:
        lines.append(line)
        if "edge (Envoy) ready" in line:
            return int(line.split("http 127.0.0.1:")[1].split(",")[0])
    raise AssertionError("".join(lines))


def test_tenfold_up_serves_through_envoy_and_stops_in_order_on_sigterm(quick_repo):
    proc = tenfold_up(quick_repo)
    lines: list[str] = []
    try:
        port = edge_port(proc, lines)
        answer = requests.post(f"http://127.0.0.1:{port}/v1/feed", json=FEED, timeout=10)
        assert answer.status_code == 200 and answer.headers["server"] == "envoy"
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    order = [
        rest.index("draining the edge (Envoy)"),
        rest.index("tenfold gateway: stopped"),
        rest.index("tenfold inference: stopped"),
        rest.index("tenfold mesh: stopped"),
    ]
    assert order == sorted(order), rest


def test_tenfold_up_with_two_gateway_workers_serves_through_envoy(quick_repo):
    # docs/gateway.md: "--workers N ... N worker processes share the ports"; behind
    # Envoy the stack picks the gateway's (private) ports, since workers need fixed ones
    import psutil

    proc = tenfold_up(quick_repo, "--workers", "2")
    lines: list[str] = []
    try:
        port = edge_port(proc, lines)
        assert any("workers=2" in line for line in lines), "".join(lines)
        workers = [
            c
            for c in psutil.Process(proc.pid).children(recursive=True)
            if "gateway.worker" in " ".join(c.cmdline())
        ]
        assert len(workers) == 2
        with requests.Session() as session:
            codes = [
                session.post(f"http://127.0.0.1:{port}/v1/feed", json=FEED, timeout=10)
                for _ in range(10)
            ]
        assert [c.status_code for c in codes] == [200] * 10
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0


def test_tenfold_up_keeps_serving_when_a_pod_dies_and_restarts_it(quick_repo):
    # issue 19 item 9 / tenfold/stack.py: "A pod that exits is restarted on its ports
    # (out of its pool until ready) while the others serve"
    import threading

    import psutil

    proc = tenfold_up(quick_repo, "--pods", "2")
    lines: list[str] = []
    statuses: list[int] = []
    stop = threading.Event()

    def load(port: int) -> None:  # one client, one feed after another
        with requests.Session() as session:
            while not stop.is_set():
                url = f"http://127.0.0.1:{port}/v1/feed"
                statuses.append(session.post(url, json=FEED, timeout=10).status_code)

    try:
        port = edge_port(proc, lines)
        pods = [
            c
            for c in psutil.Process(proc.pid).children(recursive=True)
            if "inference" in " ".join(c.cmdline())
        ]
        assert len(pods) == 2
        loader = threading.Thread(target=load, args=(port,))
        loader.start()
        wait_until(lambda: len(statuses) >= 20, "feeds before the kill", timeout=30)
        pods[0].kill()
        for line in proc.stdout:
            lines.append(line)
            if "ready again" in line:
                break
        assert any("exited with code -9; restarting it" in x for x in lines), lines[-5:]
        served = len(statuses)
        wait_until(lambda: len(statuses) >= served + 20, "feeds after the restart", timeout=30)
        stop.set()
        loader.join(30)
        assert proc.poll() is None  # the stack did not stop
        assert statuses.count(200) == len(statuses), sorted(set(statuses))
        alive = [
            c
            for c in psutil.Process(proc.pid).children(recursive=True)
            if "inference" in " ".join(c.cmdline())
        ]
        assert len(alive) == 2 and pods[1] in alive
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
        assert proc.returncode == 0
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
