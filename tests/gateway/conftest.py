from __future__ import annotations

import pytest

from gateway.launch import gateway_config, start_gateway
from inference.launch import start_pod


@pytest.fixture(scope="module")
def pods(quick_repo):
    started = [start_pod(quick_repo), start_pod(quick_repo)]
    yield started
    for pod in started:
        pod.stop()


@pytest.fixture(scope="module")
def make_gateway(quick_repo, pods):
    """Start gateways over the module's pods with extra settings; all stopped at the end."""
    started = []

    def make(**overrides):
        gateway = start_gateway(gateway_config(quick_repo, pods, **overrides))
        started.append(gateway)
        return gateway

    yield make
    for gateway in started:
        gateway.stop()


@pytest.fixture(scope="module")
def gateway(make_gateway):
    return make_gateway()
