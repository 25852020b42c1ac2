"""The effects load's uploads: real photos (loadtest/photos/) at several sizes."""

from __future__ import annotations

import io
from functools import cache
from pathlib import Path

from PIL import Image

PHOTOS = Path(__file__).parent / "photos"
#: long side, in pixels, of the uploads: thumbnails to full-HD phone photos
SIZES = (320, 640, 1280)


def names() -> list[str]:
    return sorted(p.stem for p in PHOTOS.glob("*.jpg"))


@cache
def uploads(sizes: tuple[int, ...] = SIZES) -> tuple[tuple[str, bytes], ...]:
    """``(label, jpeg bytes)`` for every photo at every long-side size."""
    if not sizes or min(sizes) < 16:
        raise ValueError(f"photo sizes must be >= 16 pixels, got {sizes}")
    out = []
    for name in names():
        with Image.open(PHOTOS / f"{name}.jpg") as original:
            rgb = original.convert("RGB")
        for size in sizes:
            scale = size / max(rgb.size)
            resized = rgb.resize(
                (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))),
                Image.Resampling.LANCZOS,
            )
            buf = io.BytesIO()
            resized.save(buf, "JPEG", quality=88)
            out.append((f"{name}@{size}", buf.getvalue()))
    return tuple(out)
