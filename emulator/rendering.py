"""Deterministic output bytes: PNG images drawn with Pillow and MP4-shaped video blobs.

A file is described by a frozen spec; the same spec always renders the same bytes, so a file
evicted from memory can be rendered again on download with an identical size and digest.
"""

from __future__ import annotations

import hashlib
import io
import random
import struct
from dataclasses import dataclass
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

# Images at or below this many pixels are cheap enough to render on the event loop.
SMALL_IMAGE_PIXELS = 256 * 256
_SHAPES = 6
_SHAPE_BYTES = 8  # x0, x1, y0, y1, red, green, blue, kind
_VIDEO_BYTES_PER_FRAME = 1024


@dataclass(frozen=True, slots=True)
class ImageSpec:
    """One generated image: its pixels depend on every field."""

    prompt: str
    seed: int
    width: int
    height: int
    index: int
    nsfw: bool = False

    @property
    def content_type(self) -> str:
        return "image/png"

    @property
    def extension(self) -> str:
        return "png"

    @property
    def cheap(self) -> bool:
        return self.width * self.height <= SMALL_IMAGE_PIXELS


@dataclass(frozen=True, slots=True)
class VideoSpec:
    """One generated video; the bytes are MP4-shaped but not playable."""

    prompt: str
    seed: int
    num_frames: int
    width: int
    height: int

    @property
    def content_type(self) -> str:
        return "video/mp4"

    @property
    def extension(self) -> str:
        return "mp4"

    @property
    def cheap(self) -> bool:
        return True


FileSpec = ImageSpec | VideoSpec


def render(spec: FileSpec) -> bytes:
    """The bytes of the file `spec` describes."""
    if isinstance(spec, ImageSpec):
        return _render_png(spec)
    return _render_video(spec)


def _digest(*parts: object) -> bytes:
    return hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=32).digest()


def _render_png(spec: ImageSpec) -> bytes:
    size = (spec.width, spec.height)
    # fal replaces flagged images with a black frame of the same size.
    image = Image.new("RGB", size) if spec.nsfw else _draw(spec, size)
    out = io.BytesIO()
    # Level 1 keeps encoding fast; the pictures are flat and compress well anyway.
    image.save(out, format="PNG", compress_level=1)
    return out.getvalue()


def _draw(spec: ImageSpec, size: tuple[int, int]) -> Image.Image:
    # Every colour and coordinate comes straight from one digest: no RNG to seed per image.
    noise = hashlib.blake2b(
        f"png\x1f{spec.prompt}\x1f{spec.seed}\x1f{spec.index}".encode(), digest_size=64
    ).digest()
    width, height = size
    image = Image.new("RGB", size, (noise[0], noise[1], noise[2]))
    draw = ImageDraw.Draw(image)
    for offset in range(3, 3 + _SHAPES * _SHAPE_BYTES, _SHAPE_BYTES):
        a, b, c, d, red, green, blue, kind = noise[offset : offset + _SHAPE_BYTES]
        x0, x1 = sorted((a * width // 255, b * width // 255))
        y0, y1 = sorted((c * height // 255, d * height // 255))
        shape = draw.ellipse if kind & 1 else draw.rectangle
        shape((x0, y0, x1, y1), fill=(red, green, blue))
    if width >= 128 and height >= 32:
        draw.text((8, 8), spec.prompt[:48], fill=(255, 255, 255), font=_font())
    return image


@lru_cache(maxsize=1)
def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default()


def _render_video(spec: VideoSpec) -> bytes:
    rng = random.Random(_digest("mp4", spec.prompt, spec.seed, spec.num_frames))
    header = f"genrelay-emulator {spec.width}x{spec.height} {spec.num_frames}f".encode()
    media = header + rng.randbytes(spec.num_frames * _VIDEO_BYTES_PER_FRAME)
    return _box(b"ftyp", b"isom\x00\x00\x02\x00isomiso2mp41") + _box(b"mdat", media)


def _box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", 8 + len(payload)) + kind + payload
