"""The fork server (servicekit.zygote): a child forked from it behaves as a child the
launcher starts as a new interpreter (ready file, ports, output, exit codes, drain on
SIGTERM), in its own process group; a zygote whose imports start a thread is refused;
the pods' own preload forks a pod that serves."""

from __future__ import annotations

import json
import os
import signal
import sys
import urllib.request

import pytest

from inference.launch import POD_PRELOAD, pod_command
from servicekit.launcher import LaunchError, launch, spawn
from servicekit.zygote import ForkServer

pytestmark = pytest.mark.integration
TOY = [sys.executable, "-m", "tests.servicekit.toy_service"]


@pytest.fixture(scope="module")
def forks():
    server = ForkServer(["servicekit.runloop", "aiohttp.web", "typer"]).start()
    yield server
    server.close()
    assert server.process.returncode == 0  # it exits when its socket closes


@pytest.fixture(params=["spawn", "fork server"])
def spawner(request, forks):
    return spawn if request.param == "spawn" else forks.spawn


def _pid_of(process) -> int:
    with urllib.request.urlopen(f"http://{process.http}/", timeout=5) as answer:
        return int(answer.read())


def test_a_child_is_ready_serves_and_drains_on_sigterm(spawner, forks):
    toy = launch(TOY, "toy", spawner=spawner)
    try:
        assert toy.http_port > 0 and _pid_of(toy) == toy.pid
        assert toy.wait_for(r"tenfold toy: ready", timeout=10)
        assert os.getpgid(toy.pid) == toy.pid  # its own process group
        forked = spawner is not spawn
        parent = int(open(f"/proc/{toy.pid}/stat").read().rsplit(")", 1)[1].split()[1])
        assert parent == (forks.process.pid if forked else os.getpid())
    finally:
        assert toy.stop() == 0
    assert "tenfold toy: stopped" in toy.output()
    assert not toy.ready_file.exists()


def test_a_child_that_cannot_start_reports_its_exit_code_and_output(spawner):
    with pytest.raises(LaunchError, match=r"exited with code 1.*cannot start: told to fail"):
        launch([*TOY, "--fail-start"], "toy", spawner=spawner)


def test_signals_reach_the_child_and_its_exit_status_comes_back(spawner):
    toy = launch([*TOY, "--slow-prepare", "30"], "toy", wait=False, spawner=spawner)
    toy.wait_ready(30, state="listening")
    toy.proc.send_signal(signal.SIGTERM)
    assert toy.proc.wait(10) == 0  # drained while preparing: a clean exit
    again = launch([*TOY, "--slow-prepare", "30"], "toy", wait=False, spawner=spawner)
    again.wait_ready(30, state="listening")
    again.proc.kill()
    assert again.proc.wait(10) == -signal.SIGKILL
    assert again.proc.poll() == -signal.SIGKILL
    again.proc.terminate()  # after the exit: nothing to signal, no error


def test_the_fork_server_runs_only_python_dash_m_commands(forks):
    with pytest.raises(ValueError, match="-m MODULE"):
        forks.spawn(["/bin/true"], "true")


def test_a_zygote_whose_imports_start_a_thread_is_refused():
    # a process with threads is not safely forked (ONNX Runtime's import starts one)
    with pytest.raises(LaunchError, match=r"has 2 threads after its imports"):
        ForkServer(["tests.servicekit.threaded_module"]).start()


def test_the_pods_preload_forks_a_pod_that_serves(standard_repo):
    server = ForkServer(POD_PRELOAD).start()  # refused if a preload starts a thread
    try:
        pod = launch(pod_command(standard_repo), "pod", spawner=server.spawn, timeout=60)
        try:
            with urllib.request.urlopen(f"http://{pod.http}/v2/health/ready", timeout=5) as ok:
                assert ok.status == 200
            body = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}
            url = f"http://{pod.http}/v2/models/scale/versions/2/infer"
            req = urllib.request.Request(url, json.dumps(body).encode())
            with urllib.request.urlopen(req, timeout=5) as answer:
                assert json.load(answer)["outputs"][0]["data"] == [3.0, 6.0]  # version 2: x3
        finally:
            assert pod.stop() == 0
    finally:
        server.close()
