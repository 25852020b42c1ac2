"""The quick build of the default models: it trains, beats the popularity baselines,
exports ONNX that matches PyTorch, and the inference pod serves it (tritonclient)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the default models need the torch extra")

import tritonclient.grpc as tgrpc  # noqa: E402

from inference.launch import start_pod  # noqa: E402
from tests.triton import grpc_infer  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture(scope="module")
def built(quick_build):
    return quick_build


def test_ranker_beats_popularity_on_every_head(built):
    _, result = built
    for head, figures in result.report["ranker"].items():
        assert figures["auc"] > figures["popularity_auc"] + 0.1, (head, figures)
        assert figures["auc"] > 0.65, (head, figures)


def test_recall_beats_the_popularity_pool(built):
    _, result = built
    recall = result.report["recall"]
    assert recall["recall_at_100"] > 2 * recall["popularity_pool_recall_at_100"], recall


def test_effects_cnn_learned_the_effect(built):
    out, result = built
    for photo, figures in result.report["effects"].items():
        # on photos it never saw, the CNN's output is nearer the hand-written effect
        # than the photo itself is
        assert figures["psnr_db"] > figures["input_psnr_db"] + 0.5, (photo, figures)
    assert (out / "effects_cartoon" / "before_after.png").stat().st_size > 10_000


def test_parity_recorded_and_tight(built):
    _, result = built
    assert set(result.report["parity_max_abs_diff"]) == {
        "feed_user_tower",
        "feed_ranker",
        "effects_cartoon",
    }
    assert max(result.report["parity_max_abs_diff"].values()) <= 1e-4


def test_assets_have_the_documented_format(built):
    out, result = built
    embeddings = np.load(out / "feed_user_tower" / "item_embeddings.npy")
    items = result.report["sizes"]["items"]
    assert embeddings.shape == (items, 32) and embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, rtol=1e-4)
    pool = np.load(out / "feed_user_tower" / "cold_start_pool.npy")
    assert pool.dtype == np.int64 and len(pool) == len(set(pool)) == 500
    assert pool.min() >= 0 and pool.max() < items
    # validation data for the optimizers (docs/models.md)
    kinds = {"feed_ranker": "ranker", "feed_user_tower": "tower", "effects_cartoon": "image"}
    for model, kind in kinds.items():
        with np.load(out / model / "validation.npz") as v:
            assert str(v["kind"]) == kind
            assert (out / model / "pytorch" / "model.pt").is_file()
            if kind == "ranker":
                assert v["item"].shape == (len(v["user_ctx"]), 1)
                assert set(np.unique(v["label_p_like"])) <= {0.0, 1.0}
                assert v["topk_items"].min() >= 1 and v["topk_items"].max() <= items
            elif kind == "tower":
                assert v["truth"].shape == (len(v["user_ctx"]), 100)
            else:
                assert v["held_out"].dtype == np.uint8 and v["held_out"].shape[1:] == (3, 256, 256)


def test_pod_serves_the_build_with_pytorch_outputs(built):
    out, result = built
    pod = start_pod(out)
    try:
        client = tgrpc.InferenceServerClient(pod.grpc)
        for model, inputs in result.held_out.items():
            rows = {k: v[:40] for k, v in inputs.items()}
            answer = grpc_infer(client, model, rows)
            with torch.inference_mode():
                expected = result.modules[model](*(torch.as_tensor(v) for v in rows.values()))
            if isinstance(expected, torch.Tensor):
                expected = (expected,)
            for got, want in zip(answer.values(), expected, strict=True):
                np.testing.assert_allclose(got, want.numpy(), atol=1e-5)
    finally:
        assert pod.stop() == 0
