from __future__ import annotations

from pathlib import Path

import pytest

from inference.process import start_pod
from tests.models import standard_repository


@pytest.fixture(scope="session")
def standard_repo(tmp_path_factory) -> Path:
    return standard_repository(tmp_path_factory.mktemp("repo"))


@pytest.fixture(scope="module")
def pod(standard_repo):
    pod = start_pod(standard_repo)
    yield pod
    pod.stop()
