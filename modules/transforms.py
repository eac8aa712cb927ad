"""The seed project's transforms on in-memory grayscale arrays: resize, crop, rotation, 3 channels, ImageNet norm.

Random transforms are for training only; evaluation is deterministic (resize, centre crop).
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """Everything needed to turn a stored grayscale array into a network input; saved in checkpoints."""

    image_size: int = 224  # px, side of the square network input
    resize: int = 256  # px, side of the square the image is resized to before cropping
    rotation: float = 10.0  # degrees, maximum random rotation (train only)
    hflip: bool = True  # random horizontal flip (train only)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.image_size < 16 or self.resize < self.image_size:
            raise ValueError(
                f"need 16 <= image_size <= resize, got image_size={self.image_size}, resize={self.resize}"
            )
        if not 0 <= self.rotation <= 180:
            raise ValueError(f"rotation must be within 0..180 degrees, got {self.rotation}")

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


def build_transform(pre: Preprocessing, *, train: bool) -> v2.Compose:
    """A transform from a (1, H, W) uint8 tensor to a normalised (3, S, S) float tensor."""
    steps: list = [v2.Resize((pre.resize, pre.resize), antialias=True)]
    if train:
        steps.append(v2.RandomCrop(pre.image_size))
        if pre.rotation > 0:
            steps.append(v2.RandomRotation(pre.rotation))
        if pre.hflip:
            steps.append(v2.RandomHorizontalFlip())
    else:
        steps.append(v2.CenterCrop(pre.image_size))
    steps += [
        v2.ToDtype(torch.float32, scale=True),
        v2.Lambda(gray_to_rgb),
        v2.Normalize(list(pre.mean), list(pre.std)),
    ]
    return v2.Compose(steps)
