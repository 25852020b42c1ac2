"""A pool of NVIDIA Triton servers behind the gateway (docs/gateway.md: "A pool is a
named set of KServe v2 endpoints (tenfold pods or Triton)"): the real ``tritonserver`` of the
``nvidia-pytriton`` wheel serving the feed and effects models, called over the
pipelines' HTTP transport (KServe v2 with the binary tensor extension) and over gRPC.
The gateway's answers must be those it gives over a tenfold pod."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from gateway.launch import gateway_config, start_gateway
from inference.launch import start_pod
from loadtest.peers import triton
from servicekit.launcher import stop_all
from tests.gateway.conftest import jpeg

ROOT = Path(__file__).resolve().parents[2]
#: the Triton venv (make triton-venv; `make test` passes its TRITON_VENV here)
TRITON_VENV = Path(os.environ.get("TENFOLD_TRITON_VENV", ROOT / ".venv-triton"))
MODELS = ["feed_recall", "feed_list_ranker", "effects_cartoon"]

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(
        not (TRITON_VENV / ".installed").exists(),
        reason=f"no Triton venv at {TRITON_VENV} (make triton-venv)",
    ),
]

#: new and known users, with and without history and seen items
FEEDS = [
    {"user_id": 42, "count": 10},
    {"user_id": 7, "count": 20, "history": [3, 17, 250], "context": {"hour": 21}},
    {"user_id": "someone-new", "count": 15},
    {"user_id": 1000, "count": 20, "seen": [5, 6, 7, 8], "context": {"device": "ios"}},
]


def pool(endpoint: dict, transport: str) -> dict:
    return {"default": {"endpoints": [endpoint], "models": MODELS, "transport": transport}}


@pytest.fixture(scope="module")
def triton_server(quick_repo, tmp_path_factory):
    work = tmp_path_factory.mktemp("triton")
    repo = triton.model_repository(quick_repo, MODELS, work / "models")
    server = triton.start(TRITON_VENV, repo, work)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def reference(quick_repo):
    """The same gateway over a tenfold pod."""
    pod = start_pod(quick_repo)
    gateway = start_gateway(
        gateway_config(quick_repo, [], pools=pool({"grpc": pod.grpc, "http": pod.http}, "http"))
    )
    yield gateway
    stop_all([gateway, pod])


def answers(gateway) -> tuple[list, bytes]:
    url = f"http://{gateway.http}"
    with requests.Session() as session:
        pages = []
        for body in FEEDS:
            answer = session.post(f"{url}/v1/feed", json=body, timeout=30)
            assert answer.status_code == 200, answer.text
            pages.append(answer.json()["items"])
        painted = session.post(
            f"{url}/v1/effects/cartoon?size=256",
            data=jpeg(96, 80),
            headers={"content-type": "image/jpeg"},
            timeout=60,
        )
        assert painted.status_code == 200, painted.text
    return pages, painted.content


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_a_triton_pool_serves_the_feed_and_effects_as_a_tenfold_pod_does(
    quick_repo, triton_server, reference, transport
):
    endpoint = {"grpc": triton_server.grpc, "http": triton_server.http}
    config = gateway_config(quick_repo, [], pools=pool(endpoint, transport), drain_grace_s=0)
    gateway = start_gateway(config)
    try:
        pages, painted = answers(gateway)
    finally:
        gateway.stop()
    want_pages, want_painted = answers(reference)
    assert [len(p) for p in want_pages] == [b["count"] for b in FEEDS]
    assert any(i["source"] == "recall" for p in want_pages for i in p)  # recall ran
    for page, want in zip(pages, want_pages, strict=True):
        assert [(i["item_id"], i["source"]) for i in page] == [
            (i["item_id"], i["source"]) for i in want
        ]
        np.testing.assert_allclose(
            [i["score"] for i in page], [i["score"] for i in want], rtol=1e-5, atol=1e-6
        )
    # the same model and encoder; each server batches and threads it its own way
    got, want = (np.asarray(Image.open(io.BytesIO(b)), np.float32) for b in (painted, want_painted))
    assert got.shape == want.shape == (256, 256, 3)
    assert np.abs(got - want).mean() < 0.5
