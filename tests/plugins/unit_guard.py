"""Unit tests start no server: a pytest plugin that fails any test not marked
``integration`` which binds a socket or starts a process (fixtures included).

It listens to Python's audit events (PEP 578, ``sys.addaudithook``), so it sees every
``bind`` and every child process, whichever library makes them, without patching any.
"""

from __future__ import annotations

import sys

import pytest

#: audit events that mean "a server or a process": a bound socket, a child process
SERVER_EVENTS = frozenset(
    {"socket.bind", "subprocess.Popen", "os.posix_spawn", "os.fork", "os.exec", "os.system"}
)


class UnitGuard:
    """Holds the node id of the unit test running now (None during integration tests)."""

    def __init__(self) -> None:
        self.running: str | None = None
        self.violations: list[str] = []

    def audit(self, event: str, args: tuple) -> None:
        if self.running is None or event not in SERVER_EVENTS:
            return
        what = f"{event}{args[:2]!r}"
        self.violations.append(what)
        self.running = None  # report once; the test fails at teardown as well
        raise RuntimeError(
            f"{what} in a test not marked integration: mark it "
            "`pytest.mark.integration` (unit tests start no server, bind no socket)"
        )


GUARD = UnitGuard()
sys.addaudithook(GUARD.audit)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    unit = item.get_closest_marker("integration") is None
    GUARD.violations = []
    GUARD.running = item.nodeid if unit else None
    try:
        return (yield)
    finally:
        GUARD.running = None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    result = yield
    if GUARD.violations:
        found, GUARD.violations = GUARD.violations, []
        pytest.fail(
            f"{item.nodeid} is not marked integration but did: {'; '.join(found)}",
            pytrace=False,
        )
    return result
