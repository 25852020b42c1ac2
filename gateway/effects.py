"""The effects pipeline: decode (off the loop) with size guards, fit to the model's
square size, infer through the effect's pool, encode (off the loop).

Decoding is bounded three ways: the header's size against ``max_image_pixels`` (413
before any pixel is decoded); the pixels actually decoded against ``DECODE_FACTOR``
times the output's (a JPEG decodes at a reduced DCT scale first, so a phone photo
still fits; a huge PNG does not); and the request's deadline around the decode, which
runs in the pipeline's own small pool of threads (``image_threads``: at most that many
images are in memory at once)."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from gateway.settings import EffectSettings
from gateway.upstream import ModelClient
from inference.protocol.errors import (
    DeadlineExceeded,
    InternalError,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    TenfoldError,
)

FORMATS = {"jpeg": "image/jpeg", "png": "image/png"}
_PIL_FORMATS = {"JPEG", "PNG"}
#: at most this many times the output's pixels are decoded (10x per side: a 2560x2560
#: PNG for a 256 result; a JPEG is first reduced by its DCT scale, 1/2 to 1/8)
DECODE_FACTOR = 100


@dataclass(frozen=True)
class Rendered:
    data: bytes
    content_type: str
    width: int
    height: int


def decode(data: bytes, max_pixels: int, size: int, draft: bool = True) -> np.ndarray:
    """JPEG/PNG bytes -> uint8 [1, size, size, 3] RGB (centre crop, then resize): the
    effect model's input as the decoder yields it, no conversion.

    With ``draft`` a JPEG is decoded at the coarsest DCT scale (1/2, 1/4, 1/8) whose
    both sides still cover ``size``, so nothing is upscaled: a 1280x960 upload for a
    256 result decodes as 640x480 (measured 18 -> 5 ms), a 2560x1920 one as 320x240
    (113 -> 12 ms); the pixels differ from a full decode by 0.005 on average (0..1)."""
    if not data:
        raise InvalidInput("body: empty; send a JPEG or PNG image")
    result = _load(data, max_pixels, size, draft)
    if isinstance(result, TenfoldError):
        # raised here, the error's traceback holds no frame that held the image: each
        # failed decode's half-decoded buffers are freed at once, not when the error
        # is (errors live on in futures and logs: 12 clients sending truncated 25 Mpx
        # JPEGs took the gateway from 100 MB to 430 MB before this)
        raise result
    return np.asarray(result)[None]  # uint8 [1, size, size, 3]


def _load(data: bytes, max_pixels: int, size: int, draft: bool) -> Image.Image | TenfoldError:
    """The fitted RGB image, or the input's fault as an error not yet raised."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return _fit(image, max_pixels, size, draft)
    except TenfoldError as exc:  # ours (413...)
        return exc.with_traceback(None)
    except Image.DecompressionBombError as exc:  # PIL's own cap, past ours: too large
        return PayloadTooLarge(f"body: image too large ({exc})")
    except (MemoryError, RecursionError):
        raise  # the process's trouble, not the input's fault
    except Exception as exc:  # whatever the decoder says of these bytes is the input's fault
        return InvalidInput(f"body: not a decodable JPEG or PNG image ({exc})")


def _fit(image: Image.Image, max_pixels: int, size: int, draft: bool) -> Image.Image:
    width, height = image.size  # from the header: nothing decoded yet
    if image.format not in _PIL_FORMATS:
        raise InvalidInput(f"body: {image.format} images are not accepted; send JPEG or PNG")
    if width * height > max_pixels:
        raise PayloadTooLarge(
            f"body: image is {width}x{height} = {width * height} pixels (at most {max_pixels})"
        )
    if draft and image.format == "JPEG":
        image.draft("RGB", (size, size))  # both sides stay >= size
    decoded = image.size[0] * image.size[1]
    if decoded > DECODE_FACTOR * size * size:
        raise PayloadTooLarge(
            f"body: a {width}x{height} {image.format} decodes {decoded} pixels, over "
            f"{DECODE_FACTOR}x the {size}x{size} result; send a smaller image or a JPEG"
        )
    # no copy of the decoded pixels on the common path: convert only what is not RGB,
    # turn upright in place (exif_transpose copies an upright image otherwise)
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    ImageOps.exif_transpose(rgb, in_place=True)
    return ImageOps.fit(rgb, (size, size), Image.Resampling.BILINEAR)


def encode(pixels: np.ndarray, fmt: str) -> Rendered:
    """uint8 [H, W, 3] RGB (the effect model's output) -> JPEG or PNG bytes."""
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise InternalError(
            f"the effect model answered {pixels.dtype} {list(pixels.shape)}; an effect "
            "model returns uint8 [batch, height, width, 3] (docs/models.md)"
        )
    image = Image.fromarray(pixels, "RGB")
    out = io.BytesIO()
    if fmt == "png":
        image.save(out, format="PNG", compress_level=1)
    else:
        image.save(out, format="JPEG", quality=90)
    return Rendered(out.getvalue(), FORMATS[fmt], image.width, image.height)


class EffectsPipeline:
    def __init__(
        self,
        effects: dict[str, EffectSettings],
        models: ModelClient,
        max_pixels: int,
        threads: int = 2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.effects = effects
        self.models = models
        self.max_pixels = max_pixels
        self.clock = clock  # the deadlines' clock
        #: decode and encode: at most ``threads`` images in memory at once
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="tenfold-image")

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    def listing(self) -> list[dict]:
        return [{"name": n, "sizes": list(e.sizes)} for n, e in sorted(self.effects.items())]

    def effect(self, name: str) -> EffectSettings:
        effect = self.effects.get(name)
        if effect is None:
            raise NotFound(f"effect {name!r} does not exist; effects: {sorted(self.effects)}")
        return effect

    def size(self, effect: EffectSettings, size: int | None) -> int:
        if size is None:
            return effect.sizes[0]
        if size not in effect.sizes:
            raise InvalidInput(f"size: {size} is not offered; sizes: {effect.sizes}")
        return size

    async def apply(
        self,
        name: str,
        data: bytes,
        size: int | None,
        fmt: str,
        deadline: float,
        request_id: str = "",
    ) -> Rendered:
        effect = self.effect(name)
        side = self.size(effect, size)
        if fmt not in FORMATS:
            raise InvalidInput(f"output format: {fmt!r} is not one of {sorted(FORMATS)}")
        loop = asyncio.get_running_loop()
        decoding = loop.run_in_executor(self.pool, decode, data, self.max_pixels, side)
        remaining = deadline - self.clock()
        try:
            image = await asyncio.wait_for(decoding, max(0.0, remaining))
        except TimeoutError:
            raise DeadlineExceeded(f"deadline exceeded while decoding the image ({name})") from None
        out, _ = await self.models.infer(effect.model, {"image": image}, deadline, "", request_id)
        stylized = next(iter(out.values()))[0]
        return await loop.run_in_executor(self.pool, encode, stylized, fmt)
