"""The optimizer end to end on the quick build's models (real ONNX Runtime, onnxslim,
quantizers and a real pod), and its refusals of bad input.

The speed gate (docs/optimizers.md: a pass "slower at a serving batch size ... by more
than ``max_slowdown``" is rejected) times the model on this machine; tests about
something else turn it off through its settings (``NO_SPEED_GATE``), so that parity
alone decides and no result hangs on the load of a shared CI machine. The gate itself
is tested with given timings (tests/optimizers/test_logic.py) and end to end here with
a bar no pass can reach."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import onnxslim  # noqa: F401  (the optimize extra: missing in CI must fail, not skip)
import pytest
import tritonclient.grpc as tgrpc

from inference.launch import start_pod
from inference.repository.loader import load_model
from inference.runtime.onnx_model import SessionSettings
from optimizers.errors import OptimizeError
from optimizers.pipeline import MANIFEST, optimize
from optimizers.settings import OptimizeSettings, ParitySettings, QuantSettings
from tests.models import MLP_CONFIG, mlp, write_model
from tests.triton import grpc_infer

pytestmark = [pytest.mark.slow, pytest.mark.integration]

FAST = {"bench": False}
#: the speed gate off: no slowdown is too much, no lossy pass has to pay
NO_SPEED_GATE = {"max_slowdown": float("inf"), "lossy_min_speedup": 0.0}
NO_SPEED_GATE_ENV = {
    "TENFOLD_OPTIMIZE_MAX_SLOWDOWN": "inf",
    "TENFOLD_OPTIMIZE_LOSSY_MIN_SPEEDUP": "0",
}


@pytest.fixture
def repo(quick_repo, tmp_path):
    """A private copy of the quick build (the optimizer writes into it)."""
    dst = tmp_path / "repo"
    shutil.copytree(quick_repo, dst)
    return dst


def run_onnx(path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A model file run by plain ONNX Runtime (not the optimizer's own runner)."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds), strict=True))


def versions(model_dir) -> list[str]:
    return sorted(p.name for p in model_dir.iterdir() if p.name.isdigit())


def test_ranker_passes_recorded_and_the_new_version_serves(repo):
    settings = OptimizeSettings(**FAST, **NO_SPEED_GATE)
    outcome = optimize(repo, "feed_ranker", settings)
    names = [p["name"] for p in outcome.passes]
    assert names == ["cleanup", "int8", "ort"]
    for p in outcome.passes:  # parity alone decides here, and every pass holds it
        assert p["status"] == "kept", p
        assert "max_abs_diff" in p["parity"] and "top10_agreement" in p["parity"]
    assert outcome.version == 2
    model_dir = repo / "feed_ranker"
    manifest = json.loads((model_dir / "2" / MANIFEST).read_text())
    assert manifest["source_version"] == 1 and manifest["version"] == 2
    assert [p["name"] for p in manifest["passes"]] == names

    # the tuned config has its effect where a pod loads the model (the pod's own
    # thread setting, 7, is overridden by the config; graph level "basic only at load")
    tuning = manifest["tuning"]
    (loaded,) = load_model(model_dir, SessionSettings(intra_op_threads=7), 0)
    assert loaded.version == 2
    assert len(loaded.sessions) == tuning["instances"]
    options = loaded.sessions[0].get_session_options()
    assert options.intra_op_num_threads == tuning["threads"] != 7
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC

    with np.load(model_dir / "validation.npz") as v:
        rows = {k: v[k][:64] for k in ("user_ctx", "history", "item")}
    original = run_onnx(model_dir / "1" / "model.onnx", rows)
    optimised = run_onnx(model_dir / "2" / "model.onnx", rows)
    pod = start_pod(repo)
    try:
        client = tgrpc.InferenceServerClient(pod.grpc)
        assert client.get_model_metadata("feed_ranker").versions == ["2"]
        served_config = client.get_model_config("feed_ranker").config
        served = grpc_infer(client, "feed_ranker", rows)
    finally:
        assert pod.stop() == 0
    assert served_config.parameters["intra_op_thread_count"].string_value == str(tuning["threads"])
    assert sum(g.count for g in served_config.instance_group) == tuning["instances"]
    # the pod serves the new file (int8: it differs from the original) ...
    for name, want in optimised.items():
        np.testing.assert_allclose(served[name], want, atol=1e-5, err_msg=name)
    assert max(np.abs(optimised[k] - original[k]).max() for k in original) > 1e-5
    # ... and its answers stay within the documented parity of the original's
    for name, want in original.items():
        np.testing.assert_allclose(served[name], want, atol=settings.parity.ranker_max_abs_diff)


def test_absurd_quantisation_is_rejected_and_the_previous_version_stays(repo):
    model_dir = repo / "effects_cartoon"
    config_before = (model_dir / "config.pbtxt").read_text()
    absurd = QuantSettings(calibration="percentile", percentile=50.0)  # clips half the range
    settings = OptimizeSettings(passes=("int8",), quant=absurd, **NO_SPEED_GATE, **FAST)
    outcome = optimize(repo, "effects_cartoon", settings)
    (record,) = outcome.passes
    assert record["status"] == "rejected"
    assert record["parity"]["min_psnr_db"] < 35
    assert "PSNR" in record["failures"][0]
    assert outcome.version is None
    assert versions(model_dir) == ["1"]
    assert (model_dir / "config.pbtxt").read_text() == config_before
    assert not [p for p in model_dir.iterdir() if p.name.startswith(".optimize-")]


def _psnr_db(reference: np.ndarray, candidate: np.ndarray) -> float:
    """PSNR of two uint8 images (levels, peak 255)."""
    mse = float(np.mean((reference.astype(np.float64) - candidate) ** 2))
    return 10 * np.log10(255.0**2 / max(mse, 1e-12))


def test_sane_static_quantisation_holds_parity(repo):
    # the painting network's depthwise convolution quantises to 34.6-34.7 dB against its
    # fp32 output (measured, minmax calibration; the wrapper's uint8 levels cost nothing:
    # the float network alone measured the same), under the default 35 dB gate. The gate
    # is a setting: at 33 dB the quantized model is kept, and what it wrote holds 33 dB
    # photo by photo, checked here with plain ONNX Runtime
    gate = 33.0
    settings = OptimizeSettings(
        passes=("cleanup", "int8"),
        parity=ParitySettings(image_min_psnr_db=gate),
        **NO_SPEED_GATE,
        **FAST,
    )
    outcome = optimize(repo, "effects_cartoon", settings)
    int8 = outcome.passes[1]
    assert int8["status"] == "kept", (int8.get("failures"), int8.get("parity"))
    model_dir = repo / "effects_cartoon"
    written = onnx.load(str(model_dir / "2" / "model.onnx"))
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in written.graph.node}
    # the written int8 model against the fp32 original, photo by photo, run here
    with np.load(model_dir / "validation.npz") as v:
        photos = v["held_out"]  # uint8 [N, 256, 256, 3], as the model takes them
    psnrs = []
    for photo in photos:
        feeds = {"image": photo[None]}
        (want,) = run_onnx(model_dir / "1" / "model.onnx", feeds).values()
        (got,) = run_onnx(model_dir / "2" / "model.onnx", feeds).values()
        psnrs.append(_psnr_db(want, got))
    # guards docs/optimizers.md: image parity "PSNR against the fp32 output, worst
    # held-out photo": the judge's figure is the worst of these
    assert min(psnrs) >= gate, psnrs
    assert int8["parity"]["min_psnr_db"] == pytest.approx(min(psnrs), abs=0.05)


def test_fp16_without_a_gpu_is_unverified_and_not_kept(repo):
    outcome = optimize(
        repo, "feed_user_tower", OptimizeSettings(target="gpu", passes=("fp16",), **FAST)
    )
    (record,) = outcome.passes
    assert record["status"] == "unverified"
    assert "no CUDA" in record["failures"][-1]
    assert outcome.version is None


def test_generic_model_without_validation_data(tmp_path):
    write_model(tmp_path, "mlp", mlp(), MLP_CONFIG)
    settings = OptimizeSettings(passes=("cleanup", "ort"), **NO_SPEED_GATE, **FAST)
    outcome = optimize(tmp_path, "mlp", settings)
    assert [p["status"] for p in outcome.passes] == ["kept", "kept"]
    # the written model against the original on inputs of its own (not the judge's)
    rows = {"features": np.random.default_rng(1).standard_normal((64, 64)).astype(np.float32)}
    want = run_onnx(tmp_path / "mlp" / "1" / "model.onnx", rows)
    got = run_onnx(tmp_path / "mlp" / "2" / "model.onnx", rows)
    # fusions reorder float sums: ~1e-6 here; the documented limit is 1e-3
    np.testing.assert_allclose(got["score"], want["score"], atol=1e-4, rtol=1e-5)


def test_report_compares_with_pytorch_eager(repo):
    settings = OptimizeSettings(
        passes=("cleanup",),
        benchmark={"batch_sizes": (1, 8), "min_time_s": 0.05, "min_runs": 2},
        **NO_SPEED_GATE,
    )
    outcome = optimize(repo, "feed_ranker", settings)
    rows = outcome.manifest["benchmark"]["rows"]
    assert [r["stage"] for r in rows] == [
        "pytorch eager fp32",
        "onnxruntime unoptimised",
        "onnxruntime online (pod default)",
        "+ cleanup",
    ]
    pytorch_ms = {t["batch"]: t["latency_ms"] for t in rows[0]["timings"]}
    for row in rows:
        assert [t["batch"] for t in row["timings"]] == [1, 8]
        for t in row["timings"]:
            # every speed-up is against PyTorch eager at the same batch size
            assert t["speedup_vs_pytorch"] == pytest.approx(
                pytorch_ms[t["batch"]] / t["latency_ms"], rel=1e-9
            )
            assert t["rows_per_s"] == pytest.approx(t["batch"] / t["latency_ms"] * 1e3)


def test_the_speed_gate_rejects_a_lossy_pass_that_does_not_pay(repo):
    # guards docs/optimizers.md: "a lossy pass (`int8`, `fp16`) must be at least
    # `lossy_min_speedup` (1.05x) faster": no int8 model is a million times faster, so
    # the pass holds parity and is still rejected, whatever this machine's load
    model_dir = repo / "feed_user_tower"
    config_before = (model_dir / "config.pbtxt").read_text()
    settings = OptimizeSettings(passes=("int8",), lossy_min_speedup=1e6, **FAST)
    outcome = optimize(repo, "feed_user_tower", settings)
    (record,) = outcome.passes
    assert record["status"] == "rejected"
    assert len(record["failures"]) == 1 and record["failures"][0].startswith("does not pay")
    assert -record["parity"]["recall_at_100_change"] <= settings.parity.tower_max_recall_drop
    assert outcome.version is None
    assert versions(model_dir) == ["1"]
    assert (model_dir / "config.pbtxt").read_text() == config_before


def test_bad_input_errors_name_the_model(repo):
    with pytest.raises(
        OptimizeError, match=r"model 'nope' is not in .* \(models there: effects_cartoon"
    ):
        optimize(repo, "nope")
    (repo / "feed_ranker" / "1" / "model.onnx").write_bytes(b"not an onnx file")
    with pytest.raises(
        OptimizeError, match=r"model 'feed_ranker': version 1: ONNX Runtime cannot load"
    ):
        optimize(repo, "feed_ranker")
    config = repo / "effects_cartoon" / "config.pbtxt"
    config.write_text(config.read_text().replace('name: "image"', 'name: "photo"'))
    with pytest.raises(OptimizeError, match=r"model 'effects_cartoon': .*photo"):
        optimize(repo, "effects_cartoon")


def test_corrupt_validation_data_is_refused_before_any_pass(repo):
    # guards docs/optimizers.md: "a corrupt `validation.npz` or one lacking arrays its
    # kind needs: each is refused before any pass runs, exit code 2, with a message
    # that names the model" (exit code: test_cli_reports_errors_and_the_table)
    npz = repo / "feed_user_tower" / "validation.npz"
    whole = npz.read_bytes()
    steps: list[str] = []
    for broken, why in [
        (whole[: len(whole) // 2], "BadZipFile"),  # a copy cut short
        (b"", "EOFError"),
        (b"not an npz file", "ValueError"),
    ]:
        npz.write_bytes(broken)
        with pytest.raises(
            OptimizeError, match=rf"model 'feed_user_tower': cannot read .*validation.npz: {why}"
        ):
            optimize(repo, "feed_user_tower", OptimizeSettings(**FAST), steps.append)
    with np.load(io.BytesIO(whole)) as v:
        np.savez(npz, **{k: v[k] for k in v.files if k != "truth"})
    with pytest.raises(
        OptimizeError, match=r"model 'feed_user_tower': .* has no arrays \['truth'\]"
    ):
        optimize(repo, "feed_user_tower", OptimizeSettings(**FAST), steps.append)
    assert steps == []  # no pass started
    assert versions(repo / "feed_user_tower") == ["1"]


def _cli(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tenfold", "optimize", *map(str, args)],
        capture_output=True,
        text=True,
        env=os.environ | (env or {}),
    )


def test_cli_reports_errors_and_the_table(repo):
    bad = _cli("nope", "--repository", repo)
    assert bad.returncode == 2 and "error: model 'nope' is not in" in bad.stderr
    bad = _cli("feed_ranker", "--repository", repo, "--passes", "turbo")
    assert bad.returncode == 2 and "unknown passes ['turbo']" in bad.stderr
    npz = repo / "effects_cartoon" / "validation.npz"
    npz.write_bytes(npz.read_bytes()[:1000])
    bad = _cli("effects_cartoon", "--repository", repo)
    assert bad.returncode == 2, bad.stderr
    assert "error: model 'effects_cartoon': cannot read" in bad.stderr
    assert "Traceback" not in bad.stderr
    reports = repo / "reports"
    ok = _cli(
        "feed_user_tower",
        "--repository",
        repo,
        "--passes",
        "cleanup",
        "--no-bench",
        "--report-dir",
        reports,
        env=NO_SPEED_GATE_ENV,
    )
    assert ok.returncode == 0, ok.stderr
    assert "cleanup" in ok.stdout and "kept" in ok.stdout
    assert (reports / "feed_user_tower.md").read_text().startswith("### feed_user_tower")
    assert json.loads((reports / "feed_user_tower.json").read_text())["version"] == 2
    assert versions(repo / "feed_user_tower") == ["1", "2"]


def test_cli_exits_1_when_no_pass_is_kept(repo):
    # guards docs/optimizers.md: "If no pass is kept nothing is written and the command
    # exits 1, saying which version stays."
    out = _cli(
        "feed_user_tower",
        "--repository",
        repo,
        "--passes",
        "int8",
        "--no-bench",
        env={"TENFOLD_OPTIMIZE_LOSSY_MIN_SPEEDUP": "1e6"},  # int8 cannot pay: rejected
    )
    assert out.returncode == 1, out.stderr
    assert "version 1 stays served" in out.stderr
    assert "rejected" in out.stdout
    assert versions(repo / "feed_user_tower") == ["1"]


def test_pod_cores_bounds_the_tuned_threads_and_instances(repo):
    # docs/optimizers.md: the tuner tries threads x instances within the pod's cores
    one = optimize(repo, "feed_ranker", OptimizeSettings(**FAST, pod_cores=1)).manifest
    tried = one["tuning"]["candidates"]
    assert tried and all(c["threads"] * c["instances"] <= 1 for c in tried)
    assert "count: 1" in one["config_after"]
    if os.cpu_count() and os.cpu_count() > 1:  # all cores: more splits are tried
        every = optimize(repo, "feed_ranker", OptimizeSettings(**FAST)).manifest
        assert max(c["threads"] * c["instances"] for c in every["tuning"]["candidates"]) > 1
