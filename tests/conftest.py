from __future__ import annotations

from pathlib import Path

import pytest

from inference.launch import start_pod
from tests.models import standard_repository


@pytest.fixture(scope="session")
def standard_repo(tmp_path_factory) -> Path:
    return standard_repository(tmp_path_factory.mktemp("repo"))


@pytest.fixture(scope="module")
def pod(standard_repo):
    pod = start_pod(standard_repo)
    yield pod
    pod.stop()


@pytest.fixture(scope="session")
def quick_build(tmp_path_factory):
    """The quick build of the default models (torch extra), once per test session."""
    pytest.importorskip("torch", reason="the default models need the torch extra")
    from tenfold.models.build import build

    out = tmp_path_factory.mktemp("models")
    return out, build(out, quick=True)


@pytest.fixture(scope="session")
def quick_repo(quick_build) -> Path:
    return quick_build[0]
