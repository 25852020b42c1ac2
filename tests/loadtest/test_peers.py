"""The peers of the side-by-side benchmark answer what ONNX Runtime answers, and Triton
is configured like the pod (instances, threads, dynamic batching)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from inference.repository.model import read_model
from loadtest.bench_peers import check_parity, limit, naive_torch, sample, workloads
from loadtest.peers import triton
from tests.models import scale, write_model

ROOT = Path(__file__).resolve().parents[2]
#: the Triton venv (make triton-venv; `make test` passes its TRITON_VENV here)
TRITON_VENV = Path(os.environ.get("TENFOLD_TRITON_VENV", ROOT / ".venv-triton"))


#: a model configured with everything Triton must mirror: instances, threads, batching
MIRRORED = """
name: "m"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ 2 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 2 ] } ]
instance_group [ { count: 2 kind: KIND_CPU } ]
dynamic_batching { preferred_batch_size: [ 4, 8 ] max_queue_delay_microseconds: 3000 }
parameters { key: "intra_op_thread_count" value: { string_value: "1" } }
"""


def test_triton_repository_mirrors_the_pods_config(tmp_path):
    # a small repository (onnx.helper, no build): a unit test, it starts nothing
    source = tmp_path / "repo"
    write_model(source, "m", scale(2.0), MIRRORED)
    out = triton.model_repository(source, ["m"], tmp_path / "triton")
    for name in ("m",):
        ours, theirs = read_model(source / name).config, read_model(out / name).config
        assert theirs.backend == "python" and not theirs.platform
        assert theirs.dynamic_batching == ours.dynamic_batching
        assert list(theirs.instance_group) == list(ours.instance_group)
        assert theirs.max_batch_size == ours.max_batch_size
        assert list(theirs.input) == list(ours.input) and list(theirs.output) == list(ours.output)
        onnx = Path(theirs.parameters["onnx_path"].string_value)
        assert onnx.is_file() and onnx.parent.parent == (source / name).resolve()
        assert (out / name / "1" / "model.py").is_file()
    mirrored = read_model(out / "m").config
    assert [g.count for g in mirrored.instance_group] == [2]
    assert list(mirrored.dynamic_batching.preferred_batch_size) == [4, 8]
    assert mirrored.dynamic_batching.max_queue_delay_microseconds == 3000


def reference(repo: Path, work) -> tuple[dict, dict]:
    feeds = sample(work, read_model(repo / work.model).input_metadata())
    return feeds, limit(repo, work, feeds, seconds=0.2)["reference"]


@pytest.mark.integration
def test_naive_torch_server_matches_onnx_runtime(quick_repo):
    works = workloads(rows=8)
    with naive_torch(quick_repo, [w.model for w in works]) as address:
        for work in works:
            feeds, ref = reference(quick_repo, work)
            assert check_parity(address, work, feeds, ref) <= work.tolerance
            # more than twice the tolerance away (in float: uint8 + 1 wraps at 255, and
            # one level is within the effect's tolerance), so no answer passes it
            shift = 2 * work.tolerance + 1
            wrong = {k: np.asarray(value, np.float64) + shift for k, value in ref.items()}
            with pytest.raises(RuntimeError, match="away from ONNX Runtime"):
                check_parity(address, work, feeds, wrong)


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.skipif(
    not (TRITON_VENV / ".installed").exists(),
    reason=f"no Triton venv at {TRITON_VENV} (make triton-venv)",
)
def test_triton_serves_the_models_like_onnx_runtime(quick_repo, tmp_path):
    models = ["feed_ranker", "effects_cartoon"]
    repo = triton.model_repository(quick_repo, models, tmp_path / "models")
    server = triton.start(TRITON_VENV, repo, tmp_path)
    try:
        for work in workloads(rows=8):
            feeds, ref = reference(quick_repo, work)
            assert check_parity(server.http, work, feeds, ref) <= work.tolerance
    finally:
        server.stop()


@pytest.mark.integration
def test_naive_effects_server_paints_like_the_model(quick_repo):
    # loadtest/peers/naive_effects.py: full decode, the network in PyTorch eager, JPEG
    # encode; its answer is the model's output on the same input (JPEG tolerance)
    import io

    import numpy as np
    import requests
    import torch
    from PIL import Image, ImageOps

    from loadtest.bench_effects import naive_effects
    from loadtest.peers.naive_effects import day_one_module, render
    from loadtest.photos import uploads

    label, data = uploads((640,))[0]
    with naive_effects(quick_repo, 1) as (address, _):
        answer = requests.post(
            f"http://{address}/v1/effects/cartoon?size=256", data=data, timeout=60
        )
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/jpeg"
    served = np.asarray(Image.open(io.BytesIO(answer.content)), np.float32)
    assert served.shape == (256, 256, 3), label
    module, path = day_one_module(quick_repo)
    # the build keeps the day-one network for this peer (docs/models.md)
    assert path.name == "day_one.pt" and type(module).__name__ == "EffectNet", path
    torch.set_num_threads(1)
    local = np.asarray(Image.open(io.BytesIO(render(module, data, 256))), np.float32)
    assert np.abs(served - local).max() == 0  # the same code path, deterministic
    fitted = ImageOps.fit(Image.open(io.BytesIO(data)).convert("RGB"), (256, 256))
    assert np.abs(served - np.asarray(fitted, np.float32)).mean() > 5  # painted, not copied
