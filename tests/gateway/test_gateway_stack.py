"""The gateway over two real pods serving the quick default models, on loopback:
feed and effects over HTTP and gRPC, KServe v2 pass-through with tritonclient, bad
input, deadlines, OpenAPI and metrics."""

from __future__ import annotations

import io
import json
from collections import Counter

import grpc
import jsonschema
import numpy as np
import pytest
import requests
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from openapi_spec_validator import validate
from PIL import Image

from gateway.effects import decode
from gateway.http.openapi import document
from protos.tenfold.v1 import gateway_pb2 as pb
from protos.tenfold.v1 import gateway_pb2_grpc as pb_grpc

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def url(gw, path: str) -> str:
    return f"http://{gw.http}{path}"


def feed(gw, body: dict, **kw) -> requests.Response:
    return requests.post(url(gw, "/v1/feed"), json=body, timeout=10, **kw)


def photo(width: int = 300, height: int = 200, fmt: str = "JPEG") -> bytes:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([x % 256, y % 256, (x + y) % 256], -1).astype(np.uint8)
    img[::7] = rng.integers(0, 255, size=img[::7].shape, dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(img).save(out, format=fmt)
    return out.getvalue()


@pytest.fixture(scope="module")
def creators(quick_repo):
    return np.load(quick_repo / "feed_user_tower" / "item_creator.npy")


def check_page(items: list[dict], count: int, creators, seen=()):
    assert len(items) == count
    ids = [i["item_id"] for i in items]
    assert len(set(ids)) == count and not set(ids) & set(seen)
    scores = [i["score"] for i in items]
    assert scores == sorted(scores, reverse=True)
    assert {i["source"] for i in items} <= {"recall", "cold_start"}
    assert max(Counter(int(creators[i]) for i in ids).values()) <= 2


def test_feed_http(gateway, creators):
    body = {"user_id": 17, "count": 20, "context": {"hour": 21, "device": "ios", "network": "5g"}}
    answer = feed(gateway, body)
    assert answer.status_code == 200, answer.text
    doc = answer.json()
    check_page(doc["items"], 20, creators)
    assert doc["model_version"] == "feed_ranker:1" and doc["experiment"] == ""
    assert len(doc["request_id"]) >= 16
    assert any(i["source"] == "recall" for i in doc["items"])


def test_feed_next_page_drops_seen(gateway, creators):
    first = feed(gateway, {"user_id": "5", "count": 30}).json()["items"]
    seen = [i["item_id"] for i in first]
    second = feed(gateway, {"user_id": "5", "count": 30, "seen": seen})
    check_page(second.json()["items"], 30, creators, seen)


def test_unknown_user_gets_the_cold_start_pool(gateway, quick_repo):
    pool = set(np.load(quick_repo / "feed_user_tower" / "cold_start_pool.npy").tolist())
    items = feed(gateway, {"user_id": "new-user-abc", "count": 10}).json()["items"]
    assert len(items) == 10
    assert all(i["source"] == "cold_start" and i["item_id"] in pool for i in items)


def test_feed_grpc_equals_http(gateway, creators):
    body = {"user_id": 33, "count": 12, "history": [5, 9, 40], "seen": [1, 2]}
    http_items = feed(gateway, body).json()["items"]
    with grpc.insecure_channel(gateway.grpc) as channel:
        answer = pb_grpc.FeedStub(channel).GetFeed(
            pb.FeedRequest(user_id="33", count=12, history=[5, 9, 40], seen=[1, 2]), timeout=10
        )
    assert [i.item_id for i in answer.items] == [i["item_id"] for i in http_items]
    assert answer.model_version == "feed_ranker:1" and answer.request_id
    check_page(
        [{"item_id": i.item_id, "score": i.score, "source": i.source} for i in answer.items],
        12,
        creators,
        [1, 2],
    )


def pod_effect(pod, image: np.ndarray) -> np.ndarray:
    client = tgrpc.InferenceServerClient(pod.grpc)
    inp = tgrpc.InferInput("image", list(image.shape), "FP32")
    inp.set_data_from_numpy(image)
    return client.infer("effects_cartoon", [inp]).as_numpy("stylized")[0]


def test_effect_http_png_equals_the_model_on_the_pod(gateway, pods):
    data = photo(320, 240, "PNG")
    answer = requests.post(
        url(gateway, "/v1/effects/cartoon?size=256"),
        data=data,
        headers={"content-type": "image/png", "accept": "image/png"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "image/png"
    got = np.asarray(Image.open(io.BytesIO(answer.content)))
    assert got.shape == (256, 256, 3)
    # the same preprocessing and the model run straight on a pod give the same pixels
    expected = pod_effect(pods[0], decode(data, 10**8, 256))
    expected = (np.clip(expected, 0, 1) * 255 + 0.5).astype(np.uint8).transpose(1, 2, 0)
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1
    # and it is a stylised image, not the photo
    source = (decode(data, 10**8, 256)[0].transpose(1, 2, 0) * 255).astype(int)
    assert np.abs(got.astype(int) - source).mean() > 3


def test_effect_http_jpeg_at_512_and_listing(gateway):
    listing = requests.get(url(gateway, "/v1/effects"), timeout=5).json()
    assert listing == {"effects": [{"name": "cartoon", "sizes": [256, 512]}]}
    answer = requests.post(
        url(gateway, "/v1/effects/cartoon?size=512"),
        data=photo(),
        headers={"content-type": "image/jpeg"},
        timeout=30,
    )
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(answer.content)).size == (512, 512)


def test_effect_grpc(gateway):
    with grpc.insecure_channel(gateway.grpc) as channel:
        stub = pb_grpc.EffectsStub(channel)
        assert [e.name for e in stub.List(pb.ListEffectsRequest()).effects] == ["cartoon"]
        answer = stub.Apply(
            pb.ApplyEffectRequest(effect="cartoon", image=photo(), output_format="png"), timeout=30
        )
        assert answer.content_type == "image/png" and (answer.width, answer.height) == (256, 256)
        assert Image.open(io.BytesIO(answer.image)).format == "PNG"
        with pytest.raises(grpc.RpcError) as err:
            stub.Apply(pb.ApplyEffectRequest(effect="nope", image=photo()), timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


def tower_inputs(module):
    ctx = np.array([[4, 20, 1, 0], [9, 8, 0, 2]], np.int64)
    hist = np.zeros((2, 20), np.int64)
    hist[:, :3] = [[3, 4, 5], [7, 8, 9]]
    inputs = [
        module.InferInput("user_ctx", [2, 4], "INT64"),
        module.InferInput("history", [2, 20], "INT64"),
    ]
    inputs[0].set_data_from_numpy(ctx)
    inputs[1].set_data_from_numpy(hist)
    return inputs


def test_passthrough_with_tritonclient(gateway, pods):
    direct = tgrpc.InferenceServerClient(pods[0].grpc).infer("feed_user_tower", tower_inputs(tgrpc))
    expected = direct.as_numpy("embedding")
    via_grpc = tgrpc.InferenceServerClient(gateway.grpc)
    assert via_grpc.is_server_live() and via_grpc.is_server_ready()
    assert via_grpc.get_model_metadata("feed_ranker").name == "feed_ranker"
    got = via_grpc.infer("feed_user_tower", tower_inputs(tgrpc)).as_numpy("embedding")
    np.testing.assert_allclose(got, expected, atol=1e-6)
    via_http = thttp.InferenceServerClient(gateway.http)
    assert via_http.is_model_ready("feed_user_tower")
    got = via_http.infer("feed_user_tower", tower_inputs(thttp)).as_numpy("embedding")
    np.testing.assert_allclose(got, expected, atol=1e-6)
    with pytest.raises(Exception, match=r"unknown|not found|no pool"):
        via_grpc.get_model_metadata("no_such_model")


BAD_FEED = [
    (b"{not json", "application/json", 400, "malformed JSON"),
    (b"[1, 2]", "application/json", 400, "JSON object"),
    (b'{"count": 5}', "application/json", 400, "user_id"),
    (b'{"user_id": 1, "count": 0}', "application/json", 400, "count"),
    (b'{"user_id": 1, "count": 101}', "application/json", 400, "count"),
    (b'{"user_id": 1, "count": "many"}', "application/json", 400, "count"),
    (b'{"user_id": 1, "history": "x"}', "application/json", 400, "history"),
    (b'{"user_id": 1, "history": [99999999]}', "application/json", 400, "history"),
    (b'{"user_id": 1, "context": {"hour": 25}}', "application/json", 400, "context.hour"),
    (b'{"user_id": 1, "context": {"device": "fridge"}}', "application/json", 400, "device"),
    (b'{"user_id": ""}', "application/json", 400, "user_id"),
    (b'{"user_id": 1, "colour": 2}', "application/json", 400, "colour"),
    (b'{"user_id": 1}', "text/plain", 415, "content-type"),
]


@pytest.mark.parametrize(("body", "ctype", "status", "needle"), BAD_FEED)
def test_bad_feed_input(gateway, body, ctype, status, needle):
    answer = requests.post(
        url(gateway, "/v1/feed"), data=body, headers={"content-type": ctype}, timeout=10
    )
    assert answer.status_code == status, answer.text
    assert needle in answer.json()["error"]


def solid_png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(out, format="PNG")
    return out.getvalue()


def gif() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 32)).save(out, format="GIF")
    return out.getvalue()


BAD_EFFECT = [
    ("cartoon", b"", "image/jpeg", 400, "empty"),
    ("cartoon", b"definitely not an image", "image/jpeg", 400, "not a decodable"),
    ("cartoon", gif(), "image/png", 400, "GIF"),
    ("cartoon", b"xx", "application/json", 415, "content-type"),
    ("cartoon", solid_png(6000, 5000), "image/png", 413, "pixels"),
    ("cartoon", b"\0" * (3 << 20), "image/jpeg", 413, "larger than"),
    ("nope", b"xx", "image/jpeg", 404, "nope"),
]


@pytest.fixture(scope="module")
def small_gateway(make_gateway):
    return make_gateway(max_body_bytes=2 << 20, max_image_pixels=20_000_000)


@pytest.mark.parametrize(("effect", "body", "ctype", "status", "needle"), BAD_EFFECT)
def test_bad_effect_input(small_gateway, effect, body, ctype, status, needle):
    gw = small_gateway
    answer = requests.post(
        url(gw, f"/v1/effects/{effect}"), data=body, headers={"content-type": ctype}, timeout=30
    )
    assert answer.status_code == status, answer.text
    assert needle in answer.json()["error"]


def test_bad_size_and_gateway_keeps_serving(gateway, creators):
    answer = requests.post(
        url(gateway, "/v1/effects/cartoon?size=300"),
        data=photo(),
        headers={"content-type": "image/jpeg"},
        timeout=10,
    )
    assert answer.status_code == 400 and "size" in answer.json()["error"]
    check_page(feed(gateway, {"user_id": 1, "count": 5}).json()["items"], 5, creators)


def test_deadline_expired_request_is_not_sent(gateway, pods):
    def pod_requests() -> float:
        text = requests.get(f"http://127.0.0.1:{pods[0].metrics_port}/metrics", timeout=5).text
        text += requests.get(f"http://127.0.0.1:{pods[1].metrics_port}/metrics", timeout=5).text
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("tenfold_inference_request_success_total")
        )

    before = pod_requests()
    answer = feed(gateway, {"user_id": 3}, headers={"x-request-timeout-ms": "0.001"})
    assert answer.status_code == 504 and "deadline" in answer.json()["error"]
    assert pod_requests() == before
    bad = feed(gateway, {"user_id": 3}, headers={"x-request-timeout-ms": "soon"})
    assert bad.status_code == 400 and "x-request-timeout-ms" in bad.json()["error"]
    with grpc.insecure_channel(gateway.grpc) as channel:
        stub = pb_grpc.EffectsStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.Apply(
                pb.ApplyEffectRequest(effect="cartoon", image=photo(), size=512), timeout=0.005
            )
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # a generous deadline still works
    assert feed(gateway, {"user_id": 3}, headers={"x-request-timeout-ms": "5000"}).ok


def test_openapi_describes_exactly_the_routes(gateway):
    spec = requests.get(url(gateway, "/openapi.json"), timeout=5).json()
    validate(spec)
    assert spec == json.loads(json.dumps(document()))
    import gateway.http.app as app_module
    from gateway.server import build_core
    from gateway.settings import GatewaySettings

    app = app_module.create_app(build_core(GatewaySettings()))
    routes = {
        (r.method.lower(), r.resource.canonical) for r in app.router.routes() if r.method != "HEAD"
    }
    described = {(m, p) for p, ops in spec["paths"].items() for m in ops}
    assert routes == described
    # a real answer matches the published schema
    schemas = spec["components"]["schemas"]
    answer = feed(gateway, {"user_id": 2, "count": 3}).json()
    resolver = {"components": {"schemas": schemas}, **schemas["FeedAnswer"]}
    jsonschema.validate(answer, resolver)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"items": "nope"}, resolver)


def test_metrics_by_route_and_pool(gateway):
    feed(gateway, {"user_id": 8})
    text = requests.get(url(gateway, "/metrics"), timeout=5).text
    assert 'tenfold_gateway_requests_total{arm="",code="200",route="feed"}' in text
    assert 'tenfold_gateway_requests_total{arm="",code="400",route="feed"}' in text
    assert 'tenfold_gateway_upstream_duration_seconds_count{outcome="ok",pool="default"}' in text
    ready = requests.get(url(gateway, "/readyz"), timeout=5).json()
    assert ready == {"ready": True, "pools": {"default": 2}}
