"""Where an effects request's time goes, stage by stage, in process on one thread:
decode, resize (centre crop + fit), model, encode; "before" (Pillow's full JPEG decode
and bilinear fit, the day-one painting network on float32 CHW pixels, converted to and
from as the gateway did then) and "after" (the gateway's reduced-scale decode and
OpenCV fit, the served network on uint8 HWC pixels).

    python -m tenfold.models.effects_stages --repository var/model-repository \\
        [--uploads 640,1280] [--size 256]

prints one JSON object (``ms[upload][form][stage]``). The day-one network is
``effects_cartoon/pytorch/day_one.pt`` (exported to ONNX here) when the build wrote
one, else the served model stands for both.
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps

from gateway.effects import decode, encode, fit, read
from loadtest.photos import uploads

STAGES = ("decode", "resize", "model", "encode")
BILINEAR = Image.Resampling.BILINEAR  # as the gateway fits


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _served(repository: Path) -> Path:
    model = repository / "effects_cartoon"
    version = max(int(p.name) for p in model.iterdir() if p.name.isdigit())
    return model / str(version) / "model.onnx"


def _day_one(repository: Path, work: Path) -> Path:
    source = repository / "effects_cartoon" / "pytorch" / "day_one.pt"
    if not source.exists():
        return _served(repository)
    import torch

    module = torch.load(source, weights_only=False).eval()
    path = work / "day_one.onnx"
    torch.onnx.export(
        module,
        (torch.rand(1, 3, 256, 256),),
        str(path),
        input_names=["image"],
        output_names=["output"],
        dynamic_axes={"image": {0: "b", 2: "h", 3: "w"}, "output": {0: "b", 2: "h", 3: "w"}},
        opset_version=17,
        dynamo=False,
    )
    return path


def _to_float(pixels: np.ndarray) -> np.ndarray:
    """uint8 [1, H, W, 3] -> float32 [1, 3, H, W] in 0..1 (the day-one model's input)."""
    out = np.empty((1, 3, *pixels.shape[1:3]), np.float32)
    np.multiply(pixels[0].transpose(2, 0, 1), np.float32(1 / 255), out=out[0])
    return out


def _to_levels(chw: np.ndarray) -> np.ndarray:
    """float32 [3, H, W] in 0..1 -> uint8 [H, W, 3] (what the encoder takes)."""
    return (np.clip(chw, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8).transpose(1, 2, 0)


def _pillow_decode(data: bytes) -> Image.Image:
    """The gateway's decode when issue 14 was filed: Pillow, full size, upright RGB."""
    with Image.open(io.BytesIO(data)) as image:
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        ImageOps.exif_transpose(rgb, in_place=True)
        rgb.load()
        return rgb


def _ms(fn, repeat: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return 1000 * (time.perf_counter() - start) / repeat


def measure(repository: Path, upload_sides: tuple[int, ...], size: int, repeat: int = 20) -> dict:
    import cv2

    cv2.setNumThreads(1)  # one thread, as the table says (the gateway sets the same)
    photos = dict(uploads(upload_sides))
    with tempfile.TemporaryDirectory() as work:
        sessions = {"before": _session(_day_one(repository, Path(work))), "after": None}
        sessions["after"] = _session(_served(repository))
        out: dict = {"uploads": list(upload_sides), "size": size, "stage_names": list(STAGES)}
        out["ms"] = {}
        for side in upload_sides:
            data = next(v for k, v in photos.items() if k.endswith(f"@{side}"))
            out["ms"][str(side)] = {}
            for form in ("before", "after"):
                if form == "before":  # Pillow: full decode, its bilinear fit
                    read_ms = _ms(lambda raw=data: _pillow_decode(raw), repeat)
                    decoded = _pillow_decode(data)
                    fit_ms = _ms(lambda d=decoded: ImageOps.fit(d, (size, size), BILINEAR), repeat)
                else:  # the gateway's: reduced-scale decode, OpenCV's fit
                    read_ms = _ms(lambda raw=data: read(raw, 10**9, size), repeat)
                    decoded = read(data, 10**9, size)
                    fit_ms = _ms(lambda d=decoded: fit(d, size), repeat)
                session = sessions[form]
                floats = session.get_inputs()[0].type == "tensor(float)"
                take = _to_float if floats else (lambda pixels: pixels)
                give = _to_levels if floats else (lambda pixels: pixels)
                feeds = {session.get_inputs()[0].name: take(decode(data, 10**9, size))}
                model = _ms(lambda s=session, f=feeds: s.run(None, f), repeat)
                result = session.run(None, feeds)[0][0]
                out["ms"][str(side)][form] = {
                    "decode": read_ms,
                    "resize": fit_ms,
                    "model": model,
                    "encode": _ms(lambda r=result, g=give: encode(g(r), "jpeg"), repeat),
                }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=Path("var/model-repository"))
    parser.add_argument("--uploads", default="640,1280", help="long sides of the uploads")
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    sides = tuple(int(x) for x in args.uploads.split(","))
    print(json.dumps(measure(args.repository, sides, args.size)), flush=True)


if __name__ == "__main__":
    main()
