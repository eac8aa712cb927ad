"""Bytes to 8-bit grayscale pixels, with the same rules for training, evaluation and prediction.

The format is decided from the file's content, never its extension; every image mode is converted explicitly
to grayscale (``L``); a file that is not one usable slice (zero bytes, truncated, not an image, absurd
dimensions, several frames) raises ``UnreadableImage`` with the reason. ``Scan`` is what every decoder returns
(this one for pictures, ``modules.dicom`` and ``modules.nifti`` for the clinical formats); ``modules.scans``
picks the decoder by content.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageOps

IMAGE_FORMATS = frozenset({"JPEG", "PNG", "BMP", "TIFF", "GIF", "WEBP", "MPO"})
MIN_SIDE = 16  # px: anything smaller is not a scan
MAX_PIXELS = 40_000_000  # width * height, checked from the header before any pixel is decoded
KEEP_MAX_SIDE = 1024  # px: larger images are downscaled once, in memory, to bound the cache
NOT_AN_IMAGE = "not an image (content is not a known image format)"
MAX_VOXELS = 64 * 1024**2  # values of a multi-image file (frames x rows x columns), checked before decoding


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


def check_size(width: int, height: int, images: int = 1) -> None:
    """Refuse (``UnreadableImage``) images that are too large or too small to be scans, from the sizes a header
    declares, before any pixel is decoded; ``images``: how many of that size the file holds."""
    if width * height > MAX_PIXELS:
        raise UnreadableImage(f"absurd dimensions {width}x{height} (more than {MAX_PIXELS:,} pixels)")
    if min(width, height) < MIN_SIDE:
        raise UnreadableImage(f"image too small: {width}x{height} (expected at least {MIN_SIDE} px a side)")
    if images * width * height > MAX_VOXELS:
        raise UnreadableImage(
            f"{images} images of {width}x{height} (more than {MAX_VOXELS:,} values in one file)"
        )


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
            raise UnreadableImage(NOT_AN_IMAGE) from None
        fmt = img.format or "unknown"
        if fmt not in IMAGE_FORMATS:
            raise UnreadableImage(f"unsupported image format {fmt}")
        width, height = img.size
        check_size(width, height)
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
class ScanImage:
    """One 2-D image of a file: its name inside the file ("" when the file is that one image; else e.g.
    "frame-003" or "axial-045", so that a reader can tell which) and its pixels."""

    name: str
    pixels: np.ndarray = field(repr=False)  # uint8 (H, W), grayscale


@dataclass(frozen=True)
class Scan:
    """A file decoded: its bytes, what it is, and the 2-D images it holds (one for a picture, one per frame or
    chosen slice for DICOM and NIfTI)."""

    data: bytes = field(repr=False)
    format: str  # from content: "JPEG", "PNG", ..., "DICOM", "NIfTI-1", "NIfTI-2"
    mode: str  # how the values were stored: a Pillow mode ("L", "RGB"), a DICOM photometric interpretation
    width: int  # of one image as stored, before square pixels or downscaling
    height: int
    images: tuple[ScanImage, ...]
    subject: str = ""  # whom the file belongs to by its own metadata (a DICOM patient or study), else ""
    unit: str = ""  # what holds its images together when no subject is known: "volume", "file" or ""
    intensity: str = "as stored"  # how the grey levels were made (the window, an inversion)
    blank: int = 0  # images of the file left out because every pixel of them has one value


def picture_scan(data: bytes) -> Scan:
    """A picture file (JPEG, PNG, ...) as a ``Scan`` of one image; raises ``UnreadableImage`` with the reason."""
    pixels, fmt, mode, width, height = decode_image(data)
    return Scan(data, fmt, mode, width, height, (ScanImage("", pixels),))
