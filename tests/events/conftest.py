from __future__ import annotations

import pytest
import redis

from gateway.events.launch import start_processor
from gateway.launch import gateway_config, start_gateway
from inference.launch import start_pod
from servicekit.launcher import stop_all
from servicekit.redis import redis_url, start_redis


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def url(redis_server) -> str:
    return redis_url(redis_server)


@pytest.fixture(scope="module")
def store(url):
    """A plain (blocking) client to look at what is stored."""
    client = redis.Redis.from_url(url)
    yield client
    client.close()


@pytest.fixture(scope="module")
def events_pod(quick_repo):
    pod = start_pod(quick_repo)
    yield pod
    pod.stop()


@pytest.fixture(scope="module")
def make_events_gateway(quick_repo, events_pod):
    started = []

    def make(redis_url: str, **events):
        config = gateway_config(
            quick_repo,
            [events_pod],
            events={"redis_url": redis_url, "trending_refresh_s": 0.2, **events},
        )
        gateway = start_gateway(config)
        started.append(gateway)
        return gateway

    yield make
    stop_all(started)


@pytest.fixture(scope="module")
def processors():
    """Start processors by consumer name; all stopped at the end."""
    started = []

    def make(redis_url: str, consumer: str, *args: str):
        child = start_processor(redis_url, consumer, *args)
        started.append(child)
        return child

    yield make
    stop_all(started)
