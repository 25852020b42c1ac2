"""The optimizer end to end on the quick build's models (real ONNX Runtime, onnxslim,
quantizers and a real pod), and its refusals of bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("onnxslim", reason="the optimizers need the optimize extra")

import tritonclient.grpc as tgrpc

from inference.launch import start_pod
from optimizers.bench import runner, session
from optimizers.errors import OptimizeError
from optimizers.pipeline import MANIFEST, optimize
from optimizers.settings import OptimizeSettings, QuantSettings
from tests.models import MLP_CONFIG, mlp, write_model
from tests.triton import grpc_infer

pytestmark = [pytest.mark.slow, pytest.mark.integration]

FAST = {"bench": False}


@pytest.fixture
def repo(quick_repo, tmp_path):
    """A private copy of the quick build (the optimizer writes into it)."""
    dst = tmp_path / "repo"
    shutil.copytree(quick_repo, dst)
    return dst


def test_ranker_passes_recorded_and_the_new_version_serves(repo):
    settings = OptimizeSettings(**FAST)
    outcome = optimize(repo, "feed_ranker", settings)
    names = [p["name"] for p in outcome.passes]
    assert names == ["cleanup", "int8", "ort"]
    for p in outcome.passes:
        assert p["status"] in {"kept", "rejected"}
        assert "max_abs_diff" in p["parity"] and "top10_agreement" in p["parity"]
        assert p["status"] == "kept" or p["failures"]
    assert outcome.version == 2
    vdir = repo / "feed_ranker" / "2"
    manifest = json.loads((vdir / MANIFEST).read_text())
    assert manifest["source_version"] == 1 and manifest["version"] == 2
    assert [p["name"] for p in manifest["passes"]] == names
    assert manifest["tuning"]["threads"] * manifest["tuning"]["instances"] >= 1
    config = (repo / "feed_ranker" / "config.pbtxt").read_text()
    assert config == manifest["config_after"] and "intra_op_thread_count" in config

    rows = {
        k: v[:64]
        for k, v in np.load(repo / "feed_ranker" / "validation.npz").items()
        if k in ("user_ctx", "history", "item")
    }
    original = runner(session(repo / "feed_ranker" / "1" / "model.onnx", 1))(rows)
    pod = start_pod(repo)
    try:
        client = tgrpc.InferenceServerClient(pod.grpc)
        assert client.get_model_metadata("feed_ranker").versions == ["2"]
        served = grpc_infer(client, "feed_ranker", rows)
    finally:
        assert pod.stop() == 0
    for name, want in original.items():
        np.testing.assert_allclose(served[name], want, atol=settings.parity.ranker_max_abs_diff)


def test_absurd_quantisation_is_rejected_and_the_previous_version_stays(repo):
    model_dir = repo / "effects_cartoon"
    config_before = (model_dir / "config.pbtxt").read_text()
    absurd = QuantSettings(calibration="percentile", percentile=50.0)  # clips half the range
    settings = OptimizeSettings(passes=("int8",), quant=absurd, max_slowdown=100, **FAST)
    outcome = optimize(repo, "effects_cartoon", settings)
    (record,) = outcome.passes
    assert record["status"] == "rejected"
    assert record["parity"]["min_psnr_db"] < 35
    assert "PSNR" in record["failures"][0]
    assert outcome.version is None
    assert sorted(p.name for p in model_dir.iterdir() if p.name.isdigit()) == ["1"]
    assert (model_dir / "config.pbtxt").read_text() == config_before
    assert not [p for p in model_dir.iterdir() if p.name.startswith(".optimize-")]


def test_sane_static_quantisation_holds_parity(repo):
    settings = OptimizeSettings(
        passes=("cleanup", "int8"), max_slowdown=100, lossy_min_speedup=0, **FAST
    )
    outcome = optimize(repo, "effects_cartoon", settings)
    int8 = outcome.passes[1]
    assert int8["status"] == "kept", int8
    assert int8["parity"]["min_psnr_db"] >= 35


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
    outcome = optimize(tmp_path, "mlp", OptimizeSettings(passes=("cleanup", "ort"), **FAST))
    assert [p["status"] for p in outcome.passes] == ["kept", "kept"]
    assert outcome.passes[0]["parity"]["max_abs_diff"] <= 1e-3
    assert (tmp_path / "mlp" / "2" / "model.onnx").is_file()


def test_report_compares_with_pytorch_eager(repo):
    settings = OptimizeSettings(
        passes=("cleanup",), benchmark={"batch_sizes": (1, 8), "min_time_s": 0.05, "min_runs": 2}
    )
    outcome = optimize(repo, "feed_ranker", settings)
    rows = outcome.manifest["benchmark"]["rows"]
    assert [r["stage"] for r in rows] == [
        "pytorch eager fp32",
        "onnxruntime unoptimised",
        "onnxruntime online (pod default)",
        "+ cleanup",
    ]
    for row in rows:
        assert [t["batch"] for t in row["timings"]] == [1, 8]
        assert all(t["latency_ms"] > 0 and t["speedup_vs_pytorch"] > 0 for t in row["timings"])
    assert rows[0]["timings"][0]["speedup_vs_pytorch"] == 1.0


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


def test_cli_reports_errors_and_the_table(repo):
    cmd = [sys.executable, "-m", "tenfold", "optimize"]
    bad = subprocess.run([*cmd, "nope", "--repository", str(repo)], capture_output=True, text=True)
    assert bad.returncode == 2 and "error: model 'nope' is not in" in bad.stderr
    bad = subprocess.run(
        [*cmd, "feed_ranker", "--repository", str(repo), "--passes", "turbo"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "unknown passes ['turbo']" in bad.stderr
    ok = subprocess.run(
        [
            *cmd,
            "feed_user_tower",
            "--repository",
            str(repo),
            "--passes",
            "cleanup",
            "--no-bench",
            "--report-dir",
            str(repo / "reports"),
        ],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    assert "cleanup" in ok.stdout and "kept" in ok.stdout
    assert (repo / "reports" / "feed_user_tower.md").read_text().startswith("### feed_user_tower")
    assert json.loads((repo / "reports" / "feed_user_tower.json").read_text())["version"] == 2
