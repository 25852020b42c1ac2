"""The effects models: image-to-image CNNs trained to reproduce a hand-written cartoon
effect (torch extra).

- ``PaintUNet``, the served one: a small U-Net that works at half and quarter
  resolution (a stride-2 stem, residual blocks at 1/4, a pixel-shuffle decoder with a
  skip from the half-resolution stem), ~4.0 ms for 256x256 on one CPU thread (ONNX
  Runtime, the served form).
- ``Uint8Image`` wraps the served network: uint8 HWC pixels in and out.
- ``EffectNet``, the day-one network (the fast-style-transfer layout: encoder, residual
  blocks, decoder, all convolutions at 1/1 to 1/4), ~25-29 ms: kept as the naive
  PyTorch peer's model (``pytorch/day_one.pt``) and for the picture.

Photos come from scikit-image's bundled samples plus procedurally generated images;
nothing is downloaded.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch
from skimage import data as skdata
from skimage import feature, filters, metrics, morphology, transform
from torch import nn

PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "immunohistochemistry",
    "hubble_deep_field",
    "retina",
    "colorwheel",
    "logo",
    "cat",
)
HELD_OUT = ("cat", "coffee")  # never trained on


def _rgb(img: np.ndarray) -> np.ndarray:
    img = img[..., :3] if img.shape[-1] == 4 else img
    return img.astype(np.float32) / 255.0


def photos(size: int = 256) -> dict[str, np.ndarray]:
    """Sample photos as float32 HxWx3 in [0, 1], resized so the short side is ``size``."""
    out = {}
    for name in PHOTOS:
        img = _rgb(getattr(skdata, name)())
        scale = size / min(img.shape[:2])
        out[name] = transform.rescale(img, scale, channel_axis=2, anti_aliasing=True).astype(
            np.float32
        )
    return out


def procedural(count: int, size: int, seed: int) -> list[np.ndarray]:
    """Smooth colour fields with shapes and texture: variety beyond the photos."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    images = []
    for _ in range(count):
        img = np.stack(
            [
                np.sin(rng.uniform(1, 8) * xx + rng.uniform(0, 6)) * 0.5
                + 0.5 * np.cos(rng.uniform(1, 8) * yy)
                for _ in range(3)
            ],
            axis=2,
        )
        for _ in range(rng.integers(3, 9)):
            cy, cx = rng.uniform(0, 1, 2)
            r = rng.uniform(0.05, 0.3)
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
            img[mask] = rng.uniform(0, 1, 3)
        img += rng.normal(0, 0.03, img.shape)
        images.append(np.clip(filters.gaussian(img, 1.0, channel_axis=2), 0, 1).astype(np.float32))
    return images


def cartoon(img: np.ndarray, levels: int = 6) -> np.ndarray:
    """The effect, by hand: edge-preserving smoothing, colour quantisation, dark edges."""
    smooth = img
    for _ in range(2):
        smooth = np.stack([filters.median(smooth[..., c], morphology.disk(2)) for c in range(3)], 2)
    smooth = filters.gaussian(smooth, 1.0, channel_axis=2)
    quant = np.round(smooth * (levels - 1)) / (levels - 1)
    gray = img.mean(axis=2)
    edges = feature.canny(gray, sigma=2.0, low_threshold=0.08, high_threshold=0.2)
    edges = morphology.dilation(edges, morphology.disk(1))
    out = np.where(edges[..., None], quant * 0.15, quant)
    return out.astype(np.float32)


def on_photo(change, image):
    """Both networks' output: a learned change in logit space on top of the photo."""
    return torch.sigmoid(change + torch.logit(image.clamp(0.01, 0.99)))


class Residual(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(ch, ch, 3, padding=1),
            nn.InstanceNorm2d(ch, affine=True),
            nn.ReLU(),
            nn.Conv2d(ch, ch, 3, padding=1),
            nn.InstanceNorm2d(ch, affine=True),
        )

    def forward(self, x):
        return x + self.body(x)


class EffectNet(nn.Module):
    """image FP32[b,3,H,W] in [0,1] -> image FP32[b,3,H,W] in [0,1]; H, W multiples of 4."""

    def __init__(self, width: int = 32, blocks: int = 4) -> None:
        super().__init__()
        w = width
        self.net = nn.Sequential(
            nn.Conv2d(3, w // 2, 5, padding=2),
            nn.ReLU(),
            nn.Conv2d(w // 2, w, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(w, w, 3, stride=2, padding=1),
            nn.ReLU(),
            *[Residual(w) for _ in range(blocks)],
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(w, w, 3, padding=1),
            nn.ReLU(),
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(w, w // 2, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(w // 2, 3, 5, padding=2),
        )

    def forward(self, image):
        return on_photo(self.net(image), image)


class PaintUNet(nn.Module):
    """image FP32[b,3,H,W] in [0,1] -> image FP32[b,3,H,W] in [0,1]; H, W multiples of 4.

    A stride-2 4x4 stem to ``half`` channels at 1/2, a stride-2 conv to ``width`` at 1/4,
    ``blocks`` residual blocks there, a pixel shuffle back to 1/2 (8 channels) joined to
    the stem's features, a depthwise-separable 3x3 conv (depthwise, then 1x1 to
    ``head``), a 3x3 conv and a pixel shuffle to full resolution: the colour regions
    come from 1/4, the edges from the 1/2 skip. The logit skip as in ``EffectNet`` (the
    network learns a change to the photo)."""

    def __init__(self, width: int = 32, blocks: int = 2, half: int = 24, head: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, half, 4, stride=2, padding=1), nn.ReLU())
        self.body = nn.Sequential(
            nn.Conv2d(half, width, 3, stride=2, padding=1),
            nn.ReLU(),
            *[Residual(width) for _ in range(blocks)],
            nn.Conv2d(width, 4 * 8, 3, padding=1),
            nn.PixelShuffle(2),
        )
        joined = half + 8
        self.head = nn.Sequential(
            nn.Conv2d(joined, joined, 3, padding=1, groups=joined),
            nn.Conv2d(joined, head, 1),
            nn.ReLU(),
            nn.Conv2d(head, 4 * 3, 3, padding=1),
            nn.PixelShuffle(2),
        )

    def forward(self, image):
        return on_photo(self.change(image), image)

    def change(self, image):
        """The logit change ``forward`` adds to the photo."""
        half = self.stem(image)
        return self.head(torch.cat([half, self.body(half)], 1))


class Uint8Image(nn.Module):
    """The served form: ``image`` UINT8[b,H,W,3] -> ``stylized`` UINT8[b,H,W,3] around a
    network on FP32[b,3,H,W] in [0,1] that has ``change`` (the logit change
    ``on_photo`` adds). The gateway's decoder yields, and its encoder takes, exactly
    these bytes: a 256x256 request and answer are 196 KB each on the wire instead of
    786 KB of float32, and neither side converts the pixels.

    ``on_photo``'s ``sigmoid(change + logit(p))`` is computed as the equal
    ``p / (p + (1 - p) * exp(-change))``: ONNX Runtime's ``Exp`` is vectorised, its
    ``Log`` is not (0.33 of the model's 5.3 ms for 256x256, one thread). The two forms
    agree to float32 rounding: at most 1 level apart after rounding (the build checks
    the served model against ``reference``). The network's pixel shuffles become
    ``ShuffleConv`` (the same values, ~5x faster in ONNX Runtime); the network passed
    in is not changed (a copy is)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = with_shuffle_convs(net)

    def forward(self, image):
        x = image.permute(0, 3, 1, 2).to(torch.float32) * (1.0 / 255.0)
        p = x.clamp(0.01, 0.99)
        y = p / (p + (1.0 - p) * torch.exp(-self.net.change(x)))
        return _levels(y)

    def reference(self, image):
        """The network's own ``forward`` (``on_photo``) on the same levels."""
        return _levels(self.net(image.permute(0, 3, 1, 2).to(torch.float32) * (1.0 / 255.0)))


def _levels(y):
    """FP32[b,3,H,W] in [0,1] -> the nearest UINT8 levels [b,H,W,3] (the cast truncates)."""
    return (y * 255.0 + 0.5).clamp(0.0, 255.0).to(torch.uint8).permute(0, 2, 3, 1)


class ShuffleConv(nn.Module):
    """``nn.PixelShuffle(r)`` as a grouped transposed convolution (kernel and stride
    ``r``) with one-hot kernels: each output is one input times 1.0, so the values are
    the same, and ONNX Runtime runs it ~5x faster than the ``DepthToSpace`` a pixel
    shuffle exports as (one thread: 0.05 against 0.24 ms for 12 -> 3 channels at
    128x128, 0.04 against 0.17 for 32 -> 8 at 64x64)."""

    def __init__(self, channels_out: int, r: int) -> None:
        super().__init__()
        self.channels_out, self.r = channels_out, r
        weight = torch.zeros(channels_out * r * r, 1, r, r)
        for k in range(channels_out * r * r):  # input channel c*r*r + i*r + j -> (i, j)
            weight[k, 0, (k % (r * r)) // r, k % r] = 1.0
        self.register_buffer("weight", weight, False)

    def forward(self, x):
        return nn.functional.conv_transpose2d(
            x, self.weight, stride=self.r, groups=self.channels_out
        )


def with_shuffle_convs(net: nn.Module) -> nn.Module:
    """A copy of ``net`` with each ``nn.PixelShuffle`` after a convolution replaced by the
    equal ``ShuffleConv`` (its channel count is that convolution's output / r^2)."""
    net = copy.deepcopy(net)
    for parent in net.modules():
        if not isinstance(parent, nn.Sequential):
            continue
        for index in range(1, len(parent)):
            shuffle, before = parent[index], parent[index - 1]
            if isinstance(shuffle, nn.PixelShuffle) and isinstance(before, nn.Conv2d):
                r = shuffle.upscale_factor
                parent[index] = ShuffleConv(before.out_channels // (r * r), r)
    return net


def _crops(pairs, n: int, size: int, rng) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for _ in range(n):
        src, dst = pairs[rng.integers(len(pairs))]
        y = rng.integers(0, src.shape[0] - size + 1)
        x = rng.integers(0, src.shape[1] - size + 1)
        xs.append(src[y : y + size, x : x + size])
        ys.append(dst[y : y + size, x : x + size])
    to_t = lambda a: np.ascontiguousarray(np.stack(a).transpose(0, 3, 1, 2))  # noqa: E731
    return to_t(xs), to_t(ys)


def training_images(
    seed: int, n_procedural: int = 12, pics: dict[str, np.ndarray] | None = None
) -> list[np.ndarray]:
    """The photos trained on (all but ``HELD_OUT``) and the procedural images."""
    pics = photos() if pics is None else pics
    return [v for k, v in pics.items() if k not in HELD_OUT] + procedural(n_procedural, 256, seed)


def _pairs(images: list[np.ndarray], augment: bool) -> list[tuple[np.ndarray, np.ndarray]]:
    """(photo, effect) pairs; with ``augment`` each image in its 8 rotations and flips,
    the effect computed on each (so the pairs are exact, not flipped targets)."""
    views = images
    if augment:
        views = [
            np.ascontiguousarray(np.rot90(img, k)[:, ::-1] if flip else np.rot90(img, k))
            for img in images
            for k in range(4)
            for flip in (False, True)
        ]
    return [(v, cartoon(v)) for v in views]


def train(
    steps: int,
    crop: int,
    progress: Callable[[float], None],
    seed: int = 0,
    n_procedural: int = 12,
    net: Callable[[], nn.Module] = EffectNet,
    augment: bool = False,
) -> tuple[nn.Module, dict[str, np.ndarray]]:
    """Train ``net()`` for ``steps`` of 8 crops (L1 to the effect, Adam, cosine);
    returns it in eval mode and the held-out photos."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    pics = photos()
    pairs = _pairs(training_images(seed, n_procedural, pics), augment)
    model = net()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    model.train()
    for step in range(steps):
        x, y = _crops(pairs, 8, crop, rng)
        loss = nn.functional.l1_loss(model(torch.as_tensor(x)), torch.as_tensor(y))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 10 == 0:
            progress(step / steps)
    model.eval()
    return model, {k: pics[k] for k in HELD_OUT}


def _centre_crop(img: np.ndarray, size: int) -> np.ndarray:
    y = (img.shape[0] - size) // 2
    x = (img.shape[1] - size) // 2
    return img[y : y + size, x : x + size]


def to_chw(img: np.ndarray, size: int = 256) -> np.ndarray:
    """Centre crop to size x size, as [1, 3, size, size] float32."""
    crop = _centre_crop(img, size)
    return np.ascontiguousarray(crop.transpose(2, 0, 1)[None], dtype=np.float32)


def to_hwc(img: np.ndarray, size: int = 256) -> np.ndarray:
    """Centre crop to size x size, as the served model's input: uint8 [1, size, size, 3]."""
    levels = np.clip(_centre_crop(img, size) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(levels[None])


def evaluate(model: nn.Module, held_out: dict[str, np.ndarray]) -> dict:
    report = {}
    for name, img in held_out.items():
        x = to_chw(img)
        target = cartoon(x[0].transpose(1, 2, 0))
        with torch.inference_mode():
            y = model(torch.as_tensor(x))[0].numpy().transpose(1, 2, 0)
        report[name] = {
            "psnr_db": float(metrics.peak_signal_noise_ratio(target, y, data_range=1.0)),
            "ssim": float(metrics.structural_similarity(target, y, channel_axis=2, data_range=1.0)),
            "input_psnr_db": float(
                metrics.peak_signal_noise_ratio(target, x[0].transpose(1, 2, 0), data_range=1.0)
            ),
        }
    return report


def before_after(models: dict[str, nn.Module], held_out: dict[str, np.ndarray], path) -> None:
    """A picture: a row per held-out photo: the photo, the hand-written effect, then each
    model's output (in the order given)."""
    from PIL import Image

    rows = []
    for img in held_out.values():
        x = to_chw(img)
        src = x[0].transpose(1, 2, 0)
        row = [src, cartoon(src)]
        for model in models.values():
            with torch.inference_mode():
                row.append(model(torch.as_tensor(x))[0].numpy().transpose(1, 2, 0))
        rows.append(np.concatenate(row, axis=1))
    grid = (np.clip(np.concatenate(rows, axis=0), 0, 1) * 255).astype(np.uint8)
    Image.fromarray(grid).save(path)
