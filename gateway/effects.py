"""The effects pipeline: decode (off the loop) with size guards, fit to the model's
square size, infer through the effect's pool, encode (off the loop).

Decoding is bounded three ways: the header's size against ``max_image_pixels`` (413
before any pixel is decoded); the pixels actually decoded against ``DECODE_FACTOR``
times the output's (a JPEG decodes at a reduced DCT scale first, so a phone photo
still fits; a huge PNG does not); and the request's deadline around the decode, which
runs in the pipeline's own small pool of threads (``image_threads``: at most that many
images are in memory at once).

The libraries, by measurement (640x427 JPEG -> 256x256, one thread): a colour JPEG is
decoded by libjpeg-turbo through ``simplejpeg`` at the coarsest of its n/8 DCT scales
that still covers the result (Pillow's ``draft`` has only 1/2, 1/4, 1/8: this upload
decoded at full size), and the centre crop is resized by OpenCV (0.13 ms against
Pillow's 0.65 ms for the same bilinear fit); Pillow reads every header (size, format,
EXIF orientation), and decodes and fits PNGs, other JPEGs (greyscale, CMYK) and any
JPEG libjpeg-turbo refuses (it is strict where libjpeg only warns)."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np
import simplejpeg
from PIL import ExifTags, Image, ImageOps

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
#: PNG for a 256 result; a JPEG is first reduced by its DCT scale, 7/8 down to 1/8)
DECODE_FACTOR = 100
#: a square at most this many times the result's side is fitted bilinearly (the n/8
#: DCT scales leave at most 4/3 on common uploads); larger ones are area-averaged, so
#: a full-size decode does not alias
LINEAR_UP_TO = 1.5
_JPEG_EOI = b"\xff\xd9"


@dataclass(frozen=True)
class Rendered:
    data: bytes
    content_type: str
    width: int
    height: int


@dataclass(frozen=True)
class Decoded:
    """An upload's pixels as stored (uint8 [H, W, 3] RGB) and the EXIF orientation
    (1..8) that turns them upright, applied after the fit (on fewer pixels)."""

    pixels: np.ndarray
    orientation: int = 1


def decode(data: bytes, max_pixels: int, size: int, draft: bool = True) -> np.ndarray:
    """JPEG/PNG bytes -> uint8 [1, size, size, 3] RGB, upright (centre crop, then
    resize): the effect model's input as the decoder yields it, no conversion.

    With ``draft`` a JPEG is decoded at the coarsest DCT scale (7/8 ... 1/8) whose both
    sides still cover ``size``, so nothing is upscaled: a 640x427 upload for a 256
    result decodes as 400x267, a 1280x853 one as 480x320, a 2560x1920 one as 640x480;
    the pixels differ from Pillow's Lanczos fit of a full decode by ~0.007 on average
    (0..1; tested ≤ 0.015)."""
    decoded = read(data, max_pixels, size, draft)
    try:
        return fit(decoded, size)[None]
    except cv2.error as exc:  # a shape OpenCV refuses is the input's, not a 500
        raise InvalidInput(f"body: the image cannot be fitted to {size}x{size} ({exc})") from None


def read(data: bytes, max_pixels: int, size: int, draft: bool = True) -> Decoded:
    """The upload's pixels, decoded at the scale ``decode`` uses; the input's faults
    as 400/413 errors."""
    if not data:
        raise InvalidInput("body: empty; send a JPEG or PNG image")
    result = _load(data, max_pixels, size, draft)
    if isinstance(result, TenfoldError):
        # raised here, the error's traceback holds no frame that held the image: each
        # failed decode's half-decoded buffers are freed at once, not when the error
        # is (errors live on in futures and logs: 12 clients sending truncated 25 Mpx
        # JPEGs took the gateway from 100 MB to 430 MB before this)
        raise result
    return result


def fit(decoded: Decoded, size: int) -> np.ndarray:
    """Centre crop to a square, resize to ``size``, turn upright: uint8 [size, size, 3].

    Up to ``LINEAR_UP_TO`` times the result's side, one bilinear warp of the exactly
    centred square (a whole-pixel crop of a DCT-scaled decode sat up to a pixel off
    the full decode's: 0.0165 against 0.0116 mean difference on the cat photo), read
    from a view of the square and a pixel around it (OpenCV 4 refuses sources over
    32767 pixels a side), then turned upright (turns and flips commute with it).
    Above that, turned upright first, then a whole-pixel centre crop area-averaged."""
    pixels = decoded.pixels
    height, width = pixels.shape[:2]
    if height == width == size:  # fitted already (Pillow's path): only turned
        return _upright(np.ascontiguousarray(pixels), decoded.orientation)
    side = min(height, width)
    if side <= LINEAR_UP_TO * size:
        offset_x, offset_y = (width - side) / 2, (height - side) / 2
        left, top = max(0, int(offset_x) - 1), max(0, int(offset_y) - 1)
        window = pixels[top : top + side + 3, left : left + side + 3]
        scale = size / side
        shift_x = (0.5 - (offset_x - left)) * scale - 0.5  # pixel centres onto centres
        shift_y = (0.5 - (offset_y - top)) * scale - 0.5
        warp = np.array([[scale, 0.0, shift_x], [0.0, scale, shift_y]], np.float32)
        out = cv2.warpAffine(
            window, warp, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
        )
        return _upright(out, decoded.orientation)
    # area-averaged, so a large decode does not alias; turned first (a whole-pixel crop
    # of an odd excess would otherwise sit on the other side after a flip)
    pixels = _upright(pixels, decoded.orientation)
    height, width = pixels.shape[:2]
    top, left = (height - side) // 2, (width - side) // 2
    crop = pixels[top : top + side, left : left + side]
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)


#: EXIF orientation -> what turns the stored pixels upright (Pillow's exif_transpose)
_UPRIGHT: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    2: lambda p: p[:, ::-1],
    3: lambda p: p[::-1, ::-1],
    4: lambda p: p[::-1],
    5: lambda p: p.transpose(1, 0, 2),
    6: lambda p: np.rot90(p, -1),
    7: lambda p: p.transpose(1, 0, 2)[::-1, ::-1],
    8: lambda p: np.rot90(p, 1),
}


def _upright(pixels: np.ndarray, orientation: int) -> np.ndarray:
    turn = _UPRIGHT.get(orientation)
    return pixels if turn is None else np.ascontiguousarray(turn(pixels))


def _load(data: bytes, max_pixels: int, size: int, draft: bool) -> Decoded | TenfoldError:
    """The decoded pixels, or the input's fault as an error not yet raised."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return _read(image, data, max_pixels, size, draft)
    except TenfoldError as exc:  # ours (413...)
        return exc.with_traceback(None)
    except Image.DecompressionBombError as exc:  # PIL's own cap, past ours: too large
        return PayloadTooLarge(f"body: image too large ({exc})")
    except (MemoryError, RecursionError):
        raise  # the process's trouble, not the input's fault
    except Exception as exc:  # whatever the decoder says of these bytes is the input's fault
        return InvalidInput(f"body: not a decodable JPEG or PNG image ({exc})")


def _read(image: Image.Image, data: bytes, max_pixels: int, size: int, draft: bool) -> Decoded:
    width, height = image.size  # from the header: nothing decoded yet
    if image.format not in _PIL_FORMATS:
        raise InvalidInput(f"body: {image.format} images are not accepted; send JPEG or PNG")
    if width * height > max_pixels:
        raise PayloadTooLarge(
            f"body: image is {width}x{height} = {width * height} pixels (at most {max_pixels})"
        )
    # only a JPEG that ends with its end-of-image marker goes to libjpeg-turbo: it pads
    # a truncated file and decodes all of it before its strict mode refuses it (a 700
    # byte file declaring 25 Mpx: 3.3 ms, where Pillow refuses it in 0.07 ms); one with
    # bytes after the marker (a motion photo's video) takes Pillow's path, as before
    if draft and image.format == "JPEG" and image.mode == "RGB" and data.endswith(_JPEG_EOI):
        turbo = _turbo(image, data, width, height, size)
        if turbo is not None:
            return turbo
    if draft and image.format == "JPEG":
        image.draft("RGB", (size, size))  # both sides stay >= size
    _check_decoded(image.size[0] * image.size[1], width, height, image.format, size)
    # convert only what is not RGB, turn upright in place (exif_transpose copies an
    # upright image otherwise), fit in Pillow: only the result becomes an array (Pillow
    # to numpy is a copy: a 5000x5000 PNG would hold 75 MB more), and ``fit`` finds it
    # at its size
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    ImageOps.exif_transpose(rgb, in_place=True)
    return Decoded(np.asarray(ImageOps.fit(rgb, (size, size), Image.Resampling.BILINEAR)))


def _turbo(image: Image.Image, data: bytes, width: int, height: int, size: int) -> Decoded | None:
    """A colour JPEG by libjpeg-turbo at the coarsest n/8 scale whose both sides cover
    the result; None where it refuses the file (strict about what libjpeg only warns
    of, e.g. extraneous bytes before a marker, or sampling it has no name for): then
    Pillow decodes it, as it did before, and its verdict stands."""
    try:
        decoded_h, decoded_w, _, _ = simplejpeg.decode_jpeg_header(
            data, min_height=size, min_width=size
        )
    except ValueError:
        return None
    _check_decoded(decoded_w * decoded_h, width, height, image.format, size)
    try:
        pixels = simplejpeg.decode_jpeg(data, "RGB", min_height=size, min_width=size)
    except ValueError:
        return None
    try:
        orientation = int(image.getexif().get(ExifTags.Base.Orientation, 1))
    except (TypeError, ValueError):
        orientation = 1  # a malformed tag: as stored
    return Decoded(pixels, orientation)


def _check_decoded(decoded: int, width: int, height: int, fmt: str | None, size: int) -> None:
    if decoded > DECODE_FACTOR * size * size:
        raise PayloadTooLarge(
            f"body: a {width}x{height} {fmt} decodes {decoded} pixels, over "
            f"{DECODE_FACTOR}x the {size}x{size} result; send a smaller image or a JPEG"
        )


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
        # OpenCV's own worker threads off (process-wide): the pool below is the image
        # path's parallelism, on cores shared with the event loop
        cv2.setNumThreads(1)
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
