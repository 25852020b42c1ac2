"""Pure logic of the optimizer: AUC, verdicts against thresholds, settings, the tuned
config, and the pod's reading of the tuned thread count."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from inference.repository.errors import RepositoryError
from inference.repository.loader import load_model
from inference.runtime.onnx_model import SessionSettings
from optimizers.judges import Evaluation, ImageJudge, Judge, RankerJudge, RecallJudge, TowerJudge
from optimizers.pipeline import speed_failures
from optimizers.quality import auc
from optimizers.settings import OptimizeSettings, ParitySettings
from optimizers.tune import Tuning, tuned_config
from protos.kserve.v2 import model_config_pb2
from servicekit.settings import SettingsError, load_settings
from tests.models import MLP_CONFIG, mlp, write_model


def brute_auc(labels, scores) -> float:
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auc_matches_pairwise_count_with_ties():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 300)
    scores = np.round(rng.random(300) + 0.3 * labels, 1)  # many ties
    assert auc(labels, scores) == pytest.approx(brute_auc(labels, scores), abs=1e-12)
    assert np.isnan(auc(np.zeros(5), np.arange(5.0)))


def _ranker(parity: ParitySettings) -> RankerJudge:
    return RankerJudge(spec=None, data={}, parity=parity)


def _ranker_eval(p: float, auc_like: float, top10: np.ndarray) -> Evaluation:
    return Evaluation(
        {"p_like": np.full((4, 1), p, np.float32), "top10": top10}, {"auc_p_like": auc_like}
    )


def test_ranker_verdict_applies_each_threshold():
    judge = _ranker(ParitySettings())
    top = np.tile(np.arange(10), (20, 1))
    ref = _ranker_eval(0.5, 0.750, top)
    assert judge.verdict(ref, _ranker_eval(0.51, 0.749, top)).ok
    assert "auc_p_like dropped" in judge.verdict(ref, _ranker_eval(0.5, 0.747, top)).failures[0]
    assert "max abs diff" in judge.verdict(ref, _ranker_eval(0.6, 0.750, top)).failures[0]
    moved = top.copy()
    moved[:2, :] += 10  # two users of 20 get an entirely new top 10: agreement 0.9
    verdict = judge.verdict(ref, _ranker_eval(0.5, 0.750, moved))
    assert verdict.figures["top10_agreement"] == pytest.approx(0.9)
    assert "top-10 agreement 0.900 < 0.95" in verdict.failures[0]
    # thresholds are settings
    loose = _ranker(ParitySettings(ranker_min_top10_agreement=0.8))
    assert loose.verdict(ref, _ranker_eval(0.5, 0.750, moved)).ok


def test_tower_verdict_on_recall_drop():
    judge = TowerJudge(None, {}, ParitySettings(tower_max_recall_drop=0.01), np.zeros((1, 1)))
    out = {"embedding": np.zeros((2, 4), np.float32)}
    ref = Evaluation(out, {"recall_at_100": 0.30})
    assert judge.verdict(ref, Evaluation(out, {"recall_at_100": 0.295})).ok
    failed = judge.verdict(ref, Evaluation(out, {"recall_at_100": 0.28}))
    assert failed.failures == ("recall@100 dropped by 0.0200 > 0.01",)


def _recall_spec():
    tensor = type("T", (), {"name": "user_ctx", "datatype": "INT64"})
    return type("S", (), {"name": "feed_recall", "inputs": (tensor(),)})()


def test_recall_judge_scores_the_recalled_ids_against_the_truth():
    # optimizers/judges.py: recall@100 of the first k recalled ids (k = the truth's width)
    truth = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    data = {"user_ctx": np.zeros((2, 4), np.int64), "truth": truth}
    judge = RecallJudge(_recall_spec(), data, ParitySettings())

    def run(feeds):
        ids = np.array([[4, 9, 1, 2, 3], [0, 10, 11, 12, 5]])  # hits 3 of 4, then 0 of 4
        return {"embedding": np.ones((2, 3), np.float32), "recall_ids": ids}

    got = judge.evaluate(run)
    assert got.figures == {"recall_at_100": pytest.approx((3 / 4 + 0 / 4) / 2)}


def test_recall_verdict_compares_ids_as_sets_not_numbers():
    judge = RecallJudge(_recall_spec(), {}, ParitySettings(tower_max_recall_drop=0.01))
    scores = np.array([[0.9, 0.8, 0.8]], np.float32)
    ref = Evaluation({"ids": np.array([[7, 90000, 3]]), "s": scores}, {"recall_at_100": 0.3})
    # a near-tie swapped: the same set, the same recall; only the order moved
    swapped = {"ids": np.array([[7, 3, 90000]]), "s": scores + 1e-4}
    verdict = judge.verdict(ref, Evaluation(swapped, {"recall_at_100": 0.3}))
    assert verdict.ok
    assert verdict.figures["recalled_ids_overlap"] == 1.0
    assert verdict.figures["max_abs_diff"] == pytest.approx(1e-4, abs=1e-6)
    # (the generic judge reads the ids' difference as an error of 89,997)
    assert not Judge(None, {}, ParitySettings()).verdict(ref, Evaluation(swapped)).ok
    lost = {"ids": np.array([[7, 5, 6]]), "s": scores}
    failed = judge.verdict(ref, Evaluation(lost, {"recall_at_100": 0.28}))
    assert failed.failures == ("recall@100 dropped by 0.0200 > 0.01",)
    assert failed.figures["recalled_ids_overlap"] == pytest.approx(1 / 3)


def test_image_verdict_is_psnr_of_the_worst_image():
    spec = type("S", (), {"inputs": (type("T", (), {"name": "image", "datatype": "FP32"})(),)})()
    judge = ImageJudge(spec, {}, ParitySettings())
    ref = np.full((2, 3, 8, 8), 0.5, np.float32)
    near, far = ref.copy(), ref.copy()
    near += 0.01  # MSE 1e-4: 40 dB
    far[1] += 0.03  # second image: MSE 9e-4: 30.5 dB
    assert judge.verdict(Evaluation({"y": ref}), Evaluation({"y": near})).figures[
        "min_psnr_db"
    ] == pytest.approx(40.0, abs=0.01)
    verdict = judge.verdict(Evaluation({"y": ref}), Evaluation({"y": far}))
    assert not verdict.ok and "PSNR 30.5 dB < 35 dB" in verdict.failures[0]


def test_image_judge_feeds_a_uint8_model_its_levels_and_compares_in_0_to_1():
    # optimizers/judges.py: validation.npz holds uint8 images in the model's layout; a
    # uint8 model takes them as they are (a float one as 0..1: the test above), and a
    # level is 1/255 of the PSNR's peak
    spec = type("S", (), {"inputs": (type("T", (), {"name": "image", "datatype": "UINT8"})(),)})()
    images = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    judge = ImageJudge(spec, {"held_out": images, "calibration": images}, ParitySettings())
    fed = judge.inputs()["image"]
    assert fed.dtype == np.uint8 and np.array_equal(fed, images)
    assert [c["image"].shape for c in judge.calibration()] == [(1, 4, 4, 3)] * 2
    ref = np.full((2, 8, 8, 3), 128, np.uint8)
    off = ref.copy()
    off[1] += 3  # 3 levels: MSE (3/255)^2, 38.6 dB
    figures = judge.verdict(Evaluation({"y": ref}), Evaluation({"y": off})).figures
    assert figures["min_psnr_db"] == pytest.approx(20 * np.log10(255 / 3), abs=0.01)
    assert figures["max_abs_diff"] == pytest.approx(3 / 255)


# guards docs/optimizers.md: "A pass that holds parity is still rejected when it is slower
# at a serving batch size ... by more than `max_slowdown` (5%), and a lossy pass (`int8`,
# `fp16`) must be at least `lossy_min_speedup` (1.05x) faster"
def test_speed_gate_on_given_timings():
    s = OptimizeSettings()  # max_slowdown 0.05, lossy_min_speedup 1.05
    # a lossless pass: up to 5% slower is kept, more is rejected
    assert speed_failures("cleanup", 10.0, 10.4, 128, s) == []
    assert speed_failures("ort", 10.0, 8.0, 128, s) == []
    assert speed_failures("ort", 10.0, 10.6, 128, s) == ["slower: 10.6 ms vs 10 ms at batch 128"]
    # a lossy pass must pay: 1.05x faster or more
    assert speed_failures("int8", 10.0, 9.5, 4, s) == []  # 1.053x
    (failure,) = speed_failures("int8", 10.0, 9.6, 4, s)  # 1.042x
    assert failure.startswith("does not pay: 9.6 ms vs 10 ms at batch 4")
    assert "1.05x faster" in failure
    assert speed_failures("fp16", 10.0, 12.0, 4, s)[0].startswith("does not pay")
    # the bars are settings; inf and 0 turn the gate off
    loose = OptimizeSettings(max_slowdown=0.5, lossy_min_speedup=1.0)
    assert speed_failures("cleanup", 10.0, 14.0, 128, loose) == []
    assert speed_failures("int8", 10.0, 10.0, 128, loose) == []
    off = OptimizeSettings(max_slowdown=float("inf"), lossy_min_speedup=0)
    assert speed_failures("cleanup", 1.0, 1e9, 128, off) == []
    assert speed_failures("int8", 1.0, 1e9, 128, off) == []
    assert speed_failures("cleanup", 0.0, 1.0, 128, off) == []


def test_unknown_pass_is_named(tmp_path):
    with pytest.raises(SettingsError, match=r"unknown passes \['turbo'\]"):
        load_settings(OptimizeSettings, None, passes=("cleanup", "turbo"))
    # any order given runs in pipeline order
    assert load_settings(OptimizeSettings, None, passes=("ort", "cleanup")).passes == (
        "cleanup",
        "ort",
    )


def _config() -> model_config_pb2.ModelConfig:
    from google.protobuf import text_format

    return text_format.Parse(MLP_CONFIG, model_config_pb2.ModelConfig())


def test_tuned_config_cpu_and_gpu():
    tuning = Tuning(1, 2, (8, 64), (), {})
    cpu = tuned_config(_config(), "cpu", tuning, optimized_offline=True)
    assert [(g.count, g.kind) for g in cpu.instance_group] == [(2, 2)]  # KIND_CPU
    assert cpu.parameters["intra_op_thread_count"].string_value == "1"
    assert list(cpu.dynamic_batching.preferred_batch_size) == [8, 64]
    assert cpu.optimization.graph.level == -1
    assert cpu.dynamic_batching.max_queue_delay_microseconds == 20000  # the rest is kept
    gpu = tuned_config(_config(), "gpu", None, optimized_offline=False)
    assert [g.kind for g in gpu.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_GPU]
    accel = gpu.optimization.execution_accelerators.gpu_execution_accelerator
    assert accel[0].name == "tensorrt" and accel[0].parameters["precision_mode"] == "FP16"
    assert not gpu.optimization.HasField("graph")


def test_pod_reads_the_tuned_thread_count(tmp_path):
    write_model(
        tmp_path,
        "mlp",
        mlp(),
        MLP_CONFIG + 'parameters { key: "intra_op_thread_count" value { string_value: "1" } }\n',
    )
    loaded = load_model(tmp_path / "mlp", SessionSettings(intra_op_threads=2), 64)[-1]
    assert loaded.sessions[0].get_session_options().intra_op_num_threads == 1
    (tmp_path / "mlp" / "config.pbtxt").write_text(
        MLP_CONFIG + 'parameters { key: "intra_op_thread_count" value { string_value: "two" } }\n'
    )
    with pytest.raises(RepositoryError, match="intra_op_thread_count must be a whole number"):
        load_model(tmp_path / "mlp", SessionSettings(), 64)
