"""The seed project's transforms on in-memory grayscale arrays: resize, crop, rotation, 3 channels, ImageNet norm.

Random transforms are for training only; evaluation is deterministic (resize, centre crop). Options beyond the
seed project: ``crop="brain"`` cuts every image to the bounding box of the head (its outer contour) before
resizing, so that scans framed with wide black borders, labels or rulers reach the network at one scale;
``intensity`` and ``scale`` add brightness/contrast and zoom jitter for training; ``intensity_norm="percentile"``
maps each scan's own head intensities onto one range (train and eval), so that collections acquired with other
scanners, sequences or windowing reach the network at one contrast.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROPS = ("none", "brain")
INTENSITY_NORMS = ("none", "percentile")
NORM_PERCENTILES = (1.0, 99.0)  # of the head's pixels, mapped to 0 and 255 by intensity_norm="percentile"


@dataclass(frozen=True)
class Preprocessing:
    """Everything needed to turn a stored grayscale array into a network input; saved in checkpoints."""

    image_size: int = 224  # px, side of the square network input
    resize: int = 256  # px, side of the square the image is resized to before cropping
    rotation: float = 10.0  # degrees, maximum random rotation (train only)
    hflip: bool = True  # random horizontal flip (train only)
    crop: str = "none"  # "none", or "brain": cut to the head's bounding box before resizing (train and eval)
    intensity: float = 0.0  # random brightness and contrast factor within 1 +- intensity (train only)
    scale: float = 0.0  # random zoom within 1 +- scale (train only)
    intensity_norm: str = "none"  # "none", or "percentile": per-scan contrast normalisation (train and eval)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.image_size < 16 or self.resize < self.image_size:
            raise ValueError(
                f"need 16 <= image_size <= resize, got image_size={self.image_size}, resize={self.resize}"
            )
        if not 0 <= self.rotation <= 180:
            raise ValueError(f"rotation must be within 0..180 degrees, got {self.rotation}")
        if self.crop not in CROPS:
            raise ValueError(f"crop must be one of {', '.join(CROPS)}, got {self.crop!r}")
        if self.intensity_norm not in INTENSITY_NORMS:
            raise ValueError(
                f"intensity_norm must be one of {', '.join(INTENSITY_NORMS)}, got {self.intensity_norm!r}"
            )
        if not 0 <= self.intensity < 1 or not 0 <= self.scale < 1:
            raise ValueError(f"intensity and scale must be within [0, 1), got {self.intensity}, {self.scale}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        d = dict(d)
        d["mean"], d["std"] = tuple(d["mean"]), tuple(d["std"])
        return cls(**d)


def to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """(H, W) uint8 array -> (1, H, W) uint8 tensor (no copy when possible)."""
    if pixels.dtype != np.uint8 or pixels.ndim != 2:
        raise ValueError(f"expected a (H, W) uint8 array, got {pixels.dtype} of shape {pixels.shape}")
    with warnings.catch_warnings():  # read-only arrays (Ray's object store) are shared, never written to
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(np.ascontiguousarray(pixels)).unsqueeze(0)


def gray_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """(1, H, W) -> (3, H, W): grayscale to the 3 channels ImageNet networks expect (a view, no copy)."""
    return x.expand(3, -1, -1)


def foreground_threshold(pixels: np.ndarray) -> float:
    """A grey level between the black background of a scan and any tissue: a tenth of the bright end of the
    histogram (99.5th percentile), at least 12. Low on purpose: a two-class threshold such as Otsu's can
    separate a bright tumour from the rest of the brain, and a crop to it would frame the tumour, not the head."""
    return max(12.0, 0.1 * float(np.percentile(pixels, 99.5)))


def _main_run(counts: np.ndarray, least: float) -> tuple[int, int] | None:
    """[start, end) of the run of consecutive lines with >= ``least`` foreground pixels that holds the most
    foreground (gaps up to 2% of the length are bridged); None when no line qualifies."""
    lines = np.flatnonzero(counts >= least)
    if len(lines) == 0:
        return None
    gap = max(1, int(0.02 * len(counts)))
    breaks = np.flatnonzero(np.diff(lines) > gap + 1)
    starts = np.concatenate([[0], breaks + 1])
    ends = np.concatenate([breaks, [len(lines) - 1]])
    mass = [counts[lines[a] : lines[b] + 1].sum() for a, b in zip(starts, ends, strict=True)]
    k = int(np.argmax(mass))
    return int(lines[starts[k]]), int(lines[ends[k]]) + 1


def brain_box(
    pixels: np.ndarray, *, margin: float = 0.03, min_fill: float = 0.04
) -> tuple[int, int, int, int]:
    """(top, bottom, left, right), bottom/right exclusive: the head's bounding box in a grayscale scan.

    Foreground is what lies above ``foreground_threshold``; a row or column belongs to the head when
    at least ``min_fill`` of it is foreground, and of the runs of such lines the one holding the most
    foreground is the head (so text, rulers and specks apart from it do not stretch the box). The box grows by ``margin`` of its size on each side, then to a square where the image allows, so that the
    head keeps its aspect ratio when resized. The whole image when nothing qualifies."""
    h, w = pixels.shape
    mask = pixels > foreground_threshold(pixels)
    rows = _main_run(mask.sum(axis=1), max(2, min_fill * w))
    cols = _main_run(mask.sum(axis=0), max(2, min_fill * h))
    if rows is None or cols is None:
        return 0, h, 0, w
    (top, bottom), (left, right) = rows, cols
    side = max(bottom - top, right - left)
    side = min(int(round(side * (1 + 2 * margin))), max(h, w))

    def span(lo: int, hi: int, limit: int) -> tuple[int, int]:
        want = min(side, limit)
        start = max(0, min((lo + hi - want) // 2, limit - want))
        return start, start + want

    top, bottom = span(top, bottom, h)
    left, right = span(left, right, w)
    return int(top), int(bottom), int(left), int(right)


def crop_to_brain(x: torch.Tensor) -> torch.Tensor:
    """(1, H, W) uint8 tensor -> the part inside ``brain_box`` (a view)."""
    top, bottom, left, right = brain_box(x[0].numpy())
    return x[:, top:bottom, left:right]


def normalize_intensity(x: torch.Tensor) -> torch.Tensor:
    """(1, H, W) uint8 tensor -> the same with the head's intensities stretched over 0..255: the
    ``NORM_PERCENTILES`` of the pixels above ``foreground_threshold`` (the head, as ``brain_box`` sees it) map to
    0 and 255, linearly, clipped. The black background stays black; a scan with no foreground, or a flat one,
    is returned unchanged. Per scan, so a collection with a brighter or flatter window reaches the network at
    the same contrast as the training one."""
    pixels = x[0].numpy()
    head = pixels[pixels > foreground_threshold(pixels)]
    if head.size < 2:
        return x
    lo, hi = np.percentile(head, NORM_PERCENTILES)
    if hi - lo < 1.0:
        return x
    out = np.clip((pixels.astype(np.float32) - lo) * (255.0 / (hi - lo)), 0.0, 255.0)
    return torch.from_numpy(np.rint(out).astype(np.uint8)).unsqueeze(0)


def build_transform(pre: Preprocessing, *, train: bool) -> v2.Compose:
    """A transform from a (1, H, W) uint8 tensor to a normalised (3, S, S) float tensor."""
    steps: list = [v2.Lambda(crop_to_brain)] if pre.crop == "brain" else []
    if pre.intensity_norm == "percentile":
        steps.append(v2.Lambda(normalize_intensity))
    steps.append(v2.Resize((pre.resize, pre.resize), antialias=True))
    if train:
        steps.append(v2.RandomCrop(pre.image_size))
        if pre.rotation > 0:
            steps.append(v2.RandomRotation(pre.rotation))
        if pre.scale > 0:
            steps.append(v2.RandomAffine(degrees=0, scale=(1 - pre.scale, 1 + pre.scale)))
        if pre.hflip:
            steps.append(v2.RandomHorizontalFlip())
        if pre.intensity > 0:
            steps.append(v2.ColorJitter(brightness=pre.intensity, contrast=pre.intensity))
    else:
        steps.append(v2.CenterCrop(pre.image_size))
    steps += [
        v2.ToDtype(torch.float32, scale=True),
        v2.Lambda(gray_to_rgb),
        v2.Normalize(list(pre.mean), list(pre.std)),
    ]
    return v2.Compose(steps)


def describe_evaluation(pre: Preprocessing) -> list[dict]:
    """The steps of ``build_transform(pre, train=False)`` as data, for a runtime outside this project (an
    exported model's description): what each step does and with which values. Keep beside the transform."""
    steps: list[dict] = [
        {
            "op": "grayscale",
            "how": "decode to 8-bit grayscale (H, W) (modules/decode.py to_gray): colour as PIL's RGB -> L "
            "(ITU-R 601-2 luma), 16-bit and float images windowed from their own minimum to maximum, "
            "transparency composited on black; images over 1024 px a side first shrunk (bilinear) to 1024",
        }
    ]
    if pre.crop == "brain":
        steps.append(
            {
                "op": "crop_to_head",
                "how": "cut to the head's bounding box: foreground = pixels above max(12, 0.1 x the 99.5th "
                "percentile); a row or column is the head's when >= 4% of it is foreground; of the runs of such "
                "lines the one holding the most foreground; the box grown by 3% a side, then squared where "
                "the image allows (modules/transforms.py brain_box)",
            }
        )
    if pre.intensity_norm == "percentile":
        steps.append(
            {
                "op": "normalize_intensity",
                "percentiles": list(NORM_PERCENTILES),
                "how": "per scan: of the pixels above max(12, 0.1 x the 99.5th percentile) (the head), the "
                "1st and 99th percentiles (numpy linear) map to 0 and 255, linearly, clipped, rounded to "
                "uint8; unchanged when fewer than 2 such pixels or the two percentiles are < 1 apart "
                "(modules/transforms.py normalize_intensity)",
            }
        )
    steps += [
        {"op": "resize", "size": [pre.resize, pre.resize], "interpolation": "bilinear", "antialias": True},
        {"op": "center_crop", "size": [pre.image_size, pre.image_size]},
        {"op": "to_float", "dtype": "float32", "scale": "divide by 255 (values in [0, 1])"},
        {"op": "gray_to_rgb", "how": "repeat the one channel 3 times"},
        {
            "op": "normalize",
            "mean": list(pre.mean),
            "std": list(pre.std),
            "how": "(x - mean) / std per channel",
        },
    ]
    return steps
