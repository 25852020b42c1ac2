"""The suite's own rules, checked so that they cannot rot silently:

- README: ``make test-unit`` (``-m 'not integration'``) runs unit tests only, i.e.
  no server; tests/plugins/unit_guard.py fails an unmarked test that binds a socket or
  starts a process (shown here on throw-away test files run by a child pytest);
- every extra the Makefile installs for the tests is really installed, at a version the
  project accepts: a test never skips because an extra is missing (no ``importorskip``),
  and a missing one fails here by name instead of as 60 import errors elsewhere.
"""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]

pytest_plugins = ["pytester"]

THROWAWAY = """
import socket
import subprocess
import sys

import pytest


def test_pure():
    assert sum([1, 2]) == 3


def test_binds_unmarked():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))


def test_spawns_unmarked():
    subprocess.run([sys.executable, "-c", "pass"], check=True)


@pytest.fixture
def server():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s


def test_fixture_binds_unmarked(server):
    assert server.getsockname()[1] > 0


@pytest.mark.integration
def test_binds_marked(server):
    subprocess.run([sys.executable, "-c", "pass"], check=True)
"""


@pytest.mark.integration  # runs pytest as a child process
def test_unit_tests_that_bind_or_spawn_fail_by_name(pytester, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the child imports the plugin from here
    pytester.makepyfile(test_throwaway=THROWAWAY)
    pytester.makeini("[pytest]\nmarkers =\n    integration: starts servers\n")
    result = pytester.runpytest_subprocess("-p", "tests.plugins.unit_guard", "-rA")
    outcomes = result.parseoutcomes()
    assert outcomes["passed"] == 2, result.stdout.str()  # test_pure, test_binds_marked
    out = result.stdout.str()
    for name in ("test_binds_unmarked", "test_spawns_unmarked", "test_fixture_binds_unmarked"):
        assert re.search(rf"(FAILED|ERROR) test_throwaway.py::{name}\b", out), out
    assert "socket.bind" in out and "subprocess.Popen" in out
    assert "not marked integration" in out
    # deselecting integration leaves only the pure test, which passes
    unit = pytester.runpytest_subprocess("-p", "tests.plugins.unit_guard", "-m", "not integration")
    assert unit.parseoutcomes().get("passed") == 1
    assert unit.ret != 0  # the three unmarked offenders still fail


def installed_extras() -> list[str]:
    """The extras the Makefile installs for `make test` (`pip install -e '.[a,b]'`)."""
    found = re.search(r"pip install[^\n]*-e '\.\[([a-z,]+)\]'", (ROOT / "Makefile").read_text())
    assert found, "the Makefile installs the project with its extras"
    return found.group(1).split(",")


def test_every_extra_the_tests_need_is_installed():
    optional = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    extras = installed_extras()
    assert {"dev", "torch", "optimize", "loadtest"} <= set(extras)
    missing = []
    for extra in extras:
        for spec in optional[extra]:
            req = Requirement(spec)
            try:
                version = metadata.version(req.name)
            except metadata.PackageNotFoundError:
                missing.append(f"{req} (extra {extra}): not installed")
                continue
            if not req.specifier.contains(version, prereleases=True):
                missing.append(f"{req} (extra {extra}): {version} installed")
    assert not missing, "run `make install`: " + "; ".join(missing)
