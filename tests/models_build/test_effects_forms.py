"""The served effect's rewrites (tenfold/models/effects.py): the same values as the
network they rewrite, checked in PyTorch and through ONNX Runtime on random networks
(no build needed; fast)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from tenfold.models import effects  # noqa: E402
from tenfold.models.export import export  # noqa: E402


def _network(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = effects.PaintUNet()
    with torch.no_grad():  # away from the initial weights, so the change is not ~0
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return net.eval()


@pytest.mark.parametrize("r, channels", [(2, 3), (2, 8), (3, 2)])
def test_shuffle_conv_is_the_pixel_shuffle(r, channels):
    x = torch.randn(2, channels * r * r, 5, 7)
    got = effects.ShuffleConv(channels, r)(x)
    torch.testing.assert_close(got, torch.nn.PixelShuffle(r)(x), rtol=0, atol=0)


def test_the_served_form_copies_the_network_and_replaces_its_shuffles():
    net = _network(0)
    served = effects.Uint8Image(net)
    kinds = lambda m: [type(x).__name__ for x in m.modules()]  # noqa: E731
    assert "PixelShuffle" in kinds(net) and "ShuffleConv" not in kinds(net)  # untouched
    assert "PixelShuffle" not in kinds(served.net) and kinds(served.net).count("ShuffleConv") == 2
    x = torch.rand(1, 3, 32, 48)
    with torch.inference_mode():
        torch.testing.assert_close(served.net(x), net(x), rtol=0, atol=0)


@pytest.mark.parametrize("seed", [0, 1])
def test_uint8_form_matches_the_networks_forward_in_levels(seed):
    served = effects.Uint8Image(_network(seed)).eval()
    pixels = torch.randint(0, 256, (2, 64, 96, 3), dtype=torch.uint8)
    with torch.inference_mode():
        got, want = served(pixels), served.reference(pixels)
        # the reference is the float network's own output, rounded to levels
        plain = served.net(pixels.permute(0, 3, 1, 2).float() / 255.0)
    assert got.dtype == torch.uint8 and got.shape == pixels.shape
    diff = (got.int() - want.int()).abs()
    # exp(-change) instead of logit: float32 rounding moves a level at a boundary only
    assert diff.max() <= 1 and (diff == 0).double().mean() >= 0.999
    expected = (plain * 255 + 0.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    assert torch.equal(want, expected)
    # the network changes the photo (the test would pass on an identity otherwise)
    assert (want.int() - pixels.int()).abs().float().mean() > 2


def test_onnx_export_of_the_served_form_keeps_the_levels_without_log_or_depth_to_space(
    tmp_path,
):
    served = effects.Uint8Image(_network(2)).eval()
    pixels = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    path = tmp_path / "model.onnx"
    dynamic = {"image": {0: "b", 1: "h", 2: "w"}, "stylized": {0: "b", 1: "h", 2: "w"}}
    export(served, {"image": pixels}, ["stylized"], path, dynamic=dynamic)

    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "Log" not in ops and "DepthToSpace" not in ops, ops
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    other = np.random.default_rng(1).integers(0, 256, (1, 96, 128, 3), dtype=np.uint8)
    for batch in (pixels, other):  # dynamic sizes too
        (got,) = session.run(None, {"image": batch})
        with torch.inference_mode():
            want = served.reference(torch.from_numpy(batch)).numpy()
        diff = np.abs(got.astype(int) - want)
        assert got.shape == batch.shape and diff.max() <= 1 and (diff == 0).mean() >= 0.999
