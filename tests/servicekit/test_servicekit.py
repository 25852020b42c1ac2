"""servicekit: the ready file, the launcher that reads it, the run loop's lifecycle and
exit codes, the supervisor's restarts (real child processes), and the pure pieces
(restart budget, Retry-After rule, upstream code table, settings sources)."""

from __future__ import annotations

import json
import signal
import sys
import urllib.request

import pytest

from inference.protocol import errors
from servicekit.launcher import LaunchError, free_ports, launch, spawn, stop_all
from servicekit.ready import ReadyState, read_ready, write_ready
from servicekit.settings import SettingsError, load_settings
from servicekit.supervisor import RestartBudget, Supervisor

TOY = [sys.executable, "-m", "tests.servicekit.toy_service"]


def _pid_of(process) -> int:
    with urllib.request.urlopen(f"http://{process.http}/", timeout=5) as resp:
        return int(resp.read())


def test_ready_file_round_trip_and_refusals(tmp_path):
    path = tmp_path / "ready.json"
    assert read_ready(path) is None
    state = ReadyState("toy", 42, "ready", "127.0.0.1", {"http": 8000, "grpc": 8001})
    write_ready(path, state)
    assert read_ready(path) == state
    assert json.loads(path.read_text())["format"] == "tenfold-ready/1"
    with pytest.raises(ValueError, match="ready state must be one of"):
        write_ready(path, ReadyState("toy", 42, "sleeping"))
    path.write_text('{"format": "something-else/9"}')
    with pytest.raises(ValueError, match="not a tenfold ready file"):
        read_ready(path)


@pytest.mark.integration
def test_launch_reads_ports_from_the_ready_file_and_stop_drains():
    toy = launch(TOY, "toy")
    try:
        assert toy.http_port > 0 and _pid_of(toy) == toy.pid
        assert toy.wait_for(r"tenfold toy: ready", timeout=10)
    finally:
        assert toy.stop() == 0
    assert "tenfold toy: stopped" in toy.output()
    assert not toy.ready_file.exists()  # the launcher's temp folder is gone


@pytest.mark.integration
def test_launch_reports_a_service_that_cannot_start():
    with pytest.raises(LaunchError, match=r"exited with code 1.*cannot start: told to fail"):
        launch([*TOY, "--fail-start"], "toy")


@pytest.mark.integration
def test_signal_while_preparing_exits_cleanly():
    toy = launch([*TOY, "--slow-prepare", "30"], "toy", wait=False)
    toy.wait_ready(30, state="listening")
    assert read_ready(toy.ready_file).state == "listening"
    toy.proc.send_signal(signal.SIGTERM)
    assert toy.proc.wait(10) == 0


def test_restart_budget_is_a_sliding_window():
    now = [0.0]
    budget = RestartBudget(limit=2, window_s=10, clock=lambda: now[0])
    assert budget.allow() and budget.allow()
    assert not budget.allow()
    now[0] = 10.5  # the first two are out of the window
    assert budget.allow()


@pytest.mark.integration
def test_supervisor_restarts_a_dead_worker_then_gives_up_when_the_budget_is_spent():
    now = [0.0]
    exits = []
    sup = Supervisor(
        "toy", TOY, 2, budget=RestartBudget(1, 60, lambda: now[0]), on_exit=exits.append
    )
    sup.start()
    try:
        first, second = sup.workers
        assert _pid_of(first) == first.pid and _pid_of(second) == second.pid
        assert sup.check()  # nothing died: nothing to do
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(10)
        assert sup.check()  # restarted within the budget
        assert exits == [first.pid] and sup.restarts == 1
        replacement = sup.workers[0]
        assert replacement.pid != first.pid and _pid_of(replacement) == replacement.pid
        replacement.proc.send_signal(signal.SIGKILL)
        replacement.proc.wait(10)
        assert not sup.check()  # a second death within the window: give up
    finally:
        codes = sup.stop()
    assert codes[1] == 0  # the healthy worker drained and exited 0


def test_retry_after_rule_is_one_for_http_and_grpc():
    assert errors.retry_after_seconds(errors.Overloaded("full")) == 1
    assert errors.retry_after_seconds(errors.TooManyRequests("slow down", 0.2)) == 1
    assert errors.retry_after_seconds(errors.TooManyRequests("slow down", 1.5)) == 2
    assert errors.retry_after_seconds(errors.InvalidInput("bad")) is None


def test_upstream_codes_map_back_to_the_hierarchy():
    assert isinstance(errors.error_for_code("RESOURCE_EXHAUSTED", "x"), errors.Overloaded)
    assert isinstance(errors.error_for_code("UNAVAILABLE", "x"), errors.ServerUnavailable)
    assert isinstance(errors.error_for_code("INVALID_ARGUMENT", "x"), errors.InvalidInput)
    internal = errors.error_for_code("DATA_LOSS", "boom")
    assert type(internal) is errors.InternalError and internal.message == "boom"
    for cls in (errors.InvalidInput, errors.ModelNotFound, errors.Overloaded):
        assert isinstance(errors.error_for_code(cls.code, "m"), cls)


def test_settings_file_problems_name_the_file(tmp_path):
    from inference.settings import InferenceSettings

    missing = tmp_path / "nope.yaml"
    with pytest.raises(SettingsError, match=r"cannot read config file .*nope\.yaml"):
        load_settings(InferenceSettings, missing)


@pytest.mark.integration
def test_free_ports_are_different_and_free():
    # servicekit/launcher.py: held open together while chosen, so none repeats
    import socket

    ports = free_ports(8)
    assert len(set(ports)) == 8
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


# on SIGTERM: mark itself stopping, then exit 0 once its peer is stopping too (3 if the
# peer never is): stopped one after the other, the first would wait for the second
PEER = """
import pathlib, signal, sys, time
me, peer = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
def stop(*_):
    me.touch()
    deadline = time.monotonic() + 20
    while not peer.exists():
        if time.monotonic() > deadline:
            sys.exit(3)
        time.sleep(0.01)
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
print("armed", flush=True)
while True:
    time.sleep(1)
"""


@pytest.mark.integration
def test_stop_all_signals_every_service_before_waiting_for_any(tmp_path):
    # servicekit/launcher.py stop_all: the drains overlap (tests' teardowns use it)
    a, b = tmp_path / "a", tmp_path / "b"
    peers = [
        spawn([sys.executable, "-c", PEER, str(a), str(b)], "peer a"),
        spawn([sys.executable, "-c", PEER, str(b), str(a)], "peer b"),
    ]
    for peer in peers:
        assert peer.wait_for("armed", timeout=10)
    done = spawn([sys.executable, "-c", "pass"], "done")
    done.proc.wait(10)
    assert stop_all([*peers, done], timeout=30) == [0, 0, 0]
