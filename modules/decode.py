"""Bytes to 8-bit grayscale pixels, with the same rules for training, evaluation and prediction.

The format is decided from the file's content, never its extension; every image mode is converted explicitly
to grayscale (``L``); a file that is not one usable slice (zero bytes, truncated, not an image, absurd
dimensions, several frames) raises ``UnreadableImage`` with the reason, or, through ``read_image``, comes back
as that reason.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageOps

IMAGE_FORMATS = frozenset({"JPEG", "PNG", "BMP", "TIFF", "GIF", "WEBP", "MPO"})
MIN_SIDE = 16  # px: anything smaller is not a scan
MAX_PIXELS = 40_000_000  # width * height, checked from the header before any pixel is decoded
KEEP_MAX_SIDE = 1024  # px: larger images are downscaled once, in memory, to bound the cache


class UnreadableImage(Exception):
    """A file is unusable; the message is the reason shown to the user."""


def to_gray(img: Image.Image) -> np.ndarray:
    """Convert any supported mode explicitly to 8-bit grayscale, shape (H, W)."""
    mode = img.mode
    if mode == "L":
        return np.asarray(img, dtype=np.uint8).copy()
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16-bit / integer / float scans: window to the image's own range (no fixed 0-65535 assumption)
        arr = np.asarray(img.convert("I") if mode.startswith("I;16") else img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    if mode == "P":
        img = img.convert("RGBA")  # the palette may carry transparency
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))  # scans have a black background
        return np.asarray(Image.alpha_composite(background, rgba).convert("L"), dtype=np.uint8).copy()
    if mode in ("RGB", "CMYK", "YCbCr", "LAB", "HSV", "1", "RGBX"):
        return np.asarray(img.convert("RGB").convert("L"), dtype=np.uint8).copy()
    raise UnreadableImage(f"unsupported image mode {mode!r}")


def decode_image(data: bytes) -> tuple[np.ndarray, str, str, int, int]:
    """Decode bytes to (pixels, format, mode, width, height) or raise ``UnreadableImage`` with the reason."""
    if not data:
        raise UnreadableImage("empty file (0 bytes)")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError:
            raise UnreadableImage("image dimensions too large (decompression bomb)") from None
        except Image.DecompressionBombWarning:
            raise UnreadableImage("image dimensions too large (decompression bomb)") from None
        except Exception:
            raise UnreadableImage("not an image (content is not a known image format)") from None
        fmt = img.format or "unknown"
        if fmt not in IMAGE_FORMATS:
            raise UnreadableImage(f"unsupported image format {fmt}")
        width, height = img.size
        if width * height > MAX_PIXELS:
            raise UnreadableImage(f"absurd dimensions {width}x{height} (more than {MAX_PIXELS:,} pixels)")
        if min(width, height) < MIN_SIDE:
            raise UnreadableImage(
                f"image too small: {width}x{height} (expected at least {MIN_SIDE} px a side)"
            )
        frames = getattr(img, "n_frames", 1)
        if frames > 1:
            raise UnreadableImage(f"{frames} frames (animated or multi-page); expected a single slice")
        mode = img.mode
        try:
            img.load()
            img = ImageOps.exif_transpose(img) or img
        except Exception as exc:
            raise UnreadableImage(f"cannot decode {fmt} data ({exc})") from None
    return to_gray(img), fmt, mode, width, height


def shrink(pixels: np.ndarray, max_side: int) -> np.ndarray:
    """``pixels`` (H, W) downscaled (bilinear) so that its longer side is at most ``max_side`` px; as is when
    it already fits."""
    h, w = pixels.shape
    if max(h, w) <= max_side:
        return pixels
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0))


@dataclass(frozen=True)
class DecodedImage:
    """A file read and decoded by ``read_image``: its bytes and what ``decode_image`` returns."""

    data: bytes = field(repr=False)
    pixels: np.ndarray = field(repr=False)  # uint8 (H, W), grayscale, at the file's own size
    format: str  # from content, e.g. "JPEG"
    mode: str  # the mode the file was stored in, before conversion to L
    width: int
    height: int


def read_image(
    read: Callable[[], bytes] | None, problem: str | None = None
) -> tuple[DecodedImage | None, str]:
    """Read a file with ``read`` and decode it: (the image, "") or (None, the reason it cannot be used).

    ``problem``: the reason a file was refused before reading (``read`` is then not called). A file that
    cannot be read (permission denied, an I/O error) comes back with its reason too, so that one bad file
    never stops the others."""
    if problem is not None:
        return None, problem
    assert read is not None
    try:
        data = read()
        pixels, fmt, mode, width, height = decode_image(data)
    except UnreadableImage as skip:
        return None, str(skip)
    except PermissionError:
        return None, "permission denied (unreadable file)"
    except OSError as exc:
        return None, f"cannot read ({exc.strerror or exc})"
    return DecodedImage(data, pixels, fmt, mode, width, height), ""
