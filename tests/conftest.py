"""Shared fixtures and two rules of the suite.

- A test that starts a server, binds a socket or spawns a process is marked
  ``integration``: ``make test-unit`` (``-m 'not integration'``) runs no server
  (README). The rule is enforced, not hoped for: tests/plugins/unit_guard.py fails
  any unmarked test that binds a socket or starts a process.
- The quick build of the default models (~35 s, torch extra) is made once, before the
  first test runs, so the per-test timeout (pyproject: ``timeout``) is never charged
  with it. Only runs whose selection needs it build it.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import pytest

from inference.launch import start_pod
from tests.models import standard_repository

# unit tests start no server (enforced; see the plugin)
pytest_plugins = ["tests.plugins.unit_guard"]

# --- the quick build, once, before the tests --------------------------------------


class QuickBuild:
    """Where the session's quick build lives, or why it failed."""

    def __init__(self) -> None:
        self.value = None
        self.error: BaseException | None = None
        self.directory: Path | None = None


QUICK_BUILD = pytest.StashKey[QuickBuild]()


def needs_quick_build(items) -> bool:
    return any("quick_build" in getattr(item, "fixturenames", ()) for item in items)


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session):
    if session.config.option.collectonly or not needs_quick_build(session.items):
        return None
    state = QuickBuild()
    session.config.stash[QUICK_BUILD] = state
    report = session.config.pluginmanager.get_plugin("terminalreporter")
    say = report.write_line if report is not None else print
    say("tenfold: quick build of the default models (once per run, before the tests) ...")
    start = time.perf_counter()
    state.directory = Path(tempfile.mkdtemp(prefix="tenfold-quick-build-"))
    try:
        from rich.console import Console

        from tenfold.models.build import build

        out = state.directory / "models"
        state.value = (out, build(out, quick=True, console=Console(quiet=True)))
    except Exception as exc:  # every test that needs it errors with this reason
        state.error = exc
    say(
        f"tenfold: quick build {'failed' if state.error else 'done'} "
        f"in {time.perf_counter() - start:.0f} s"
    )
    return None


def pytest_sessionfinish(session):
    state = session.config.stash.get(QUICK_BUILD, None)
    if state is not None and state.directory is not None:
        shutil.rmtree(state.directory, ignore_errors=True)


@pytest.fixture(scope="session")
def quick_build(request):
    """The quick build of the default models: ``(directory, Built)``."""
    state = request.config.stash.get(QUICK_BUILD, None)
    if state is None:
        raise RuntimeError("the quick build was not made before the tests (see conftest)")
    if state.error is not None:
        raise RuntimeError(f"the quick build failed: {state.error!r}") from state.error
    return state.value


@pytest.fixture(scope="session")
def quick_repo(quick_build) -> Path:
    return quick_build[0]


# --- small repositories built with onnx.helper (no torch) -------------------------


@pytest.fixture(scope="session")
def standard_repo(tmp_path_factory) -> Path:
    return standard_repository(tmp_path_factory.mktemp("repo"))


@pytest.fixture(scope="module")
def pod(standard_repo):
    pod = start_pod(standard_repo)
    yield pod
    pod.stop()
