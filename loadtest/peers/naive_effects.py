"""The "naive PyTorch effects" peer: what a team writes on day one. An aiohttp server
whose ``POST /v1/effects/{effect}?size=N`` handler decodes the upload in full (Pillow),
centre-crops and resizes it, runs the painting network in PyTorch eager, encodes a
JPEG and answers, one request at a time, on the event loop, no batching. Same request
and answer shape as tenfold's ``/v1/effects/{effect}``, so the same load reaches both.

It runs the effect model of the day tenfold's effects work started (``EffectNet``, the
network the default build trained before issue 14): ``<repository>/effects_cartoon/
pytorch/day_one.pt``, which every build writes.

    python -m loadtest.peers.naive_effects --repository DIR [--threads 1] [--ready-file F]
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from aiohttp import web
from PIL import Image, ImageOps

from loadtest.peers.serving import peer_arguments, serve
from servicekit.web import json_response


def day_one_module(repository: Path) -> tuple[torch.nn.Module, Path]:
    """The day-one network (float CHW in and out: this server converts the pixels
    itself, as day-one code does)."""
    path = repository / "effects_cartoon" / "pytorch" / "day_one.pt"
    if not path.exists():
        raise SystemExit(
            f"naive effects: {path} is missing; the default build writes it "
            "(tenfold models build --out DIR)"
        )
    return torch.load(path, weights_only=False).eval(), path


def render(module: torch.nn.Module, data: bytes, size: int) -> bytes:
    image = ImageOps.exif_transpose(Image.open(io.BytesIO(data)).convert("RGB"))
    fitted = ImageOps.fit(image, (size, size), Image.Resampling.BILINEAR)
    x = torch.from_numpy(np.asarray(fitted, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    with torch.inference_mode():
        y = module(x)[0].clamp(0, 1).mul(255).add(0.5).to(torch.uint8).permute(1, 2, 0)
    out = io.BytesIO()
    Image.fromarray(y.numpy(), "RGB").save(out, format="JPEG", quality=90)
    return out.getvalue()


def create_app(module: torch.nn.Module) -> web.Application:
    async def ready(request: web.Request) -> web.Response:
        return json_response({"ready": True})

    async def handle(request: web.Request) -> web.Response:
        size = int(request.query.get("size", "256"))
        body = await request.read()
        return web.Response(body=render(module, body, size), content_type="image/jpeg")

    app = web.Application(client_max_size=32 * 1024 * 1024)
    app.router.add_get("/readyz", ready)
    app.router.add_post("/v1/effects/{effect}", handle)
    return app


def main() -> None:
    args = peer_arguments(__doc__.split("\n\n")[0]).parse_args()
    torch.set_num_threads(args.threads)
    module, path = day_one_module(args.repository)
    print(f"naive effects: serving {path}", flush=True)
    serve(create_app(module), "naive effects", args.port, args.ready_file)


if __name__ == "__main__":
    main()
