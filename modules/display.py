"""What a viewer does to scanner values before a person sees them, for the clinical formats (DICOM, NIfTI):
a window of values mapped linearly to 8-bit grey, and pixels made square.

Where a file carries no window of its own, the window is robust: from the 0.5th to the 99.5th percentile of
the values, so that a few hot voxels or a padding value do not flatten the contrast of everything else.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

PERCENTILES = (0.5, 99.5)
ASPECT_TOLERANCE = 0.01  # pixel spacings that differ by less than this share are taken as square


def percentile_window(values: np.ndarray) -> tuple[float, float] | None:
    """The (low, high) window over the finite ``values`` (any shape): their ``PERCENTILES``, or their minimum
    and maximum when those percentiles coincide; None when every finite value is the same (or none is)."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return None
    lo, hi = (float(v) for v in np.percentile(finite, PERCENTILES))
    if hi <= lo:
        lo, hi = float(finite.min()), float(finite.max())
    return (lo, hi) if hi > lo else None


def window_to_uint8(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``values`` mapped linearly so that ``lo`` becomes 0 and ``hi`` 255, clipped and rounded (``hi`` below
    ``lo`` gives the reversed map); NaN becomes what ``lo`` does."""
    if hi == lo:
        raise ValueError(f"window [{lo}, {hi}] is empty; expected two different bounds")
    scaled = (np.nan_to_num(values.astype(np.float64), nan=lo) - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def square_size(height: int, width: int, row_spacing: float, col_spacing: float) -> tuple[int, int]:
    """The (height, width) of an image of that size once its pixels are square (see ``square_pixels``)."""
    if not (row_spacing > 0 and col_spacing > 0):
        return height, width
    if abs(row_spacing - col_spacing) <= ASPECT_TOLERANCE * max(row_spacing, col_spacing):
        return height, width
    finer = min(row_spacing, col_spacing)
    return max(1, round(height * row_spacing / finer)), max(1, round(width * col_spacing / finer))


def square_pixels(pixels: np.ndarray, row_spacing: float, col_spacing: float) -> np.ndarray:
    """``pixels`` (H, W) resampled (bilinear) so that a pixel is as tall as it is wide, the coarser axis brought
    to the finer spacing (``row_spacing``: between rows, ``col_spacing``: between columns, any one unit).
    As is when a spacing is unknown (not positive) or they differ by less than ``ASPECT_TOLERANCE``."""
    size = square_size(*pixels.shape, row_spacing, col_spacing)
    if size == pixels.shape:
        return pixels
    return np.asarray(Image.fromarray(pixels).resize(size[::-1], Image.Resampling.BILINEAR))
