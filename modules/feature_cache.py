"""Compute the frozen part of a ResNet50 once per experiment, so that trials train only the unfrozen part.

In a staged trial the layers below the first unfrozen stage never train and always run in eval mode (batch-norm
statistics frozen, no dropout), so their output is a fixed function of the input image. The cache stores, for
K augmented views of every training image and the evaluation view of every val/test image:

* ``pooled``: the backbone's pooled 2048 features (all a stage-1 epoch needs: the head alone trains on them);
* ``cut[d]``: the activations at the input of the first unfrozen stage for unfreeze depth ``d`` (1: layer3's
  output, the input of layer4; 2: layer2's output; 3: layer1's output). Depth 4 unfreezes everything: no cut.

Values are stored as float16 NumPy arrays (compact, and shared zero-copy through Ray's object store);
``modules.cached_training`` trains on them. This module needs torch only (never Ray).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from modules.transforms import Preprocessing, build_transform, to_tensor

CUT_AFTER = {1: "layer3", 2: "layer2", 3: "layer1"}  # unfreeze depth -> backbone stage whose output is cached
CHANNELS = {"layer1": 256, "layer2": 512, "layer3": 1024}
STRIDE = {"layer1": 4, "layer2": 8, "layer3": 16}
POOLED = 2048
BYTES = 2  # float16
SPLITS = ("train", "val", "test")
CACHE_PRECISIONS = ("32", "bf16")


class CacheTooLarge(ValueError):
    """The cache would exceed the allowed size; the message gives both and how to proceed."""


def cut_shape(depth: int, image_size: int) -> tuple[int, int, int]:
    layer = CUT_AFTER[depth]
    side = -(-image_size // STRIDE[layer])  # ceil: torchvision's convolutions pad
    return (CHANNELS[layer], side, side)


def estimate_bytes(*, n_train: int, n_eval: int, views: int, image_size: int, depths: Iterable[int]) -> int:
    """Bytes of a cache for these counts (float16), before any of it is computed."""
    per_view = POOLED + sum(int(np.prod(cut_shape(d, image_size))) for d in set(depths))
    return BYTES * per_view * (n_train * views + n_eval)


@dataclass
class FeatureCache:
    """Cached frozen-backbone outputs, and which images serve each split.

    The arrays cover the images the cache was built for: ``train_*`` hold ``views`` training views of the
    images in ``train_index >= 0`` (shape (T, K, ...)), ``eval_*`` one evaluation view of the images in
    ``eval_index >= 0`` (shape (E, 1, ...)). ``splits`` names the split of every image for the run at hand;
    ``with_splits`` serves another assignment (a cross-validation fold) from the same arrays, without a copy.
    """

    train_pooled: np.ndarray
    eval_pooled: np.ndarray
    train_cut: dict[int, np.ndarray]
    eval_cut: dict[int, np.ndarray]
    image_targets: np.ndarray  # (N,) class index of every image
    train_index: np.ndarray  # (N,) row of each image in the train arrays, -1 when it has no training views
    eval_index: np.ndarray  # (N,) row in the eval arrays, -1 when it has no evaluation view
    splits: tuple[str, ...]  # (N,) "train", "val", "test", or anything else for an image this run ignores
    views: int
    image_size: int
    build_seconds: float = 0.0
    info: dict = field(default_factory=dict)

    @property
    def depths(self) -> tuple[int, ...]:
        return tuple(sorted(self.train_cut))

    @property
    def cut(self) -> dict[int, dict[str, np.ndarray]]:
        """Per depth and split, the cut activations (a copy; for inspection and tests)."""
        return {d: {s: self._gather(d, s) for s in SPLITS} for d in self.depths}

    @property
    def pooled(self) -> dict[str, np.ndarray]:
        return {s: self._gather("pooled", s) for s in SPLITS}

    @property
    def targets(self) -> dict[str, np.ndarray]:
        return {s: self.image_targets[self.members(s)] for s in SPLITS}

    @property
    def nbytes(self) -> int:
        arrays = [self.train_pooled, self.eval_pooled, *self.train_cut.values(), *self.eval_cut.values()]
        return sum(a.nbytes for a in arrays)

    def members(self, split: str) -> np.ndarray:
        return np.asarray([i for i, s in enumerate(self.splits) if s == split], dtype=np.int64)

    def rows(self, key: str | int, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(array, row of each image of ``split`` in it): training views for "train", the evaluation view
        otherwise. ``key``: "pooled" or an unfreeze depth."""
        train = split == "train"
        index = (self.train_index if train else self.eval_index)[self.members(split)]
        if (index < 0).any():
            kind = "training views" if train else "an evaluation view"
            raise ValueError(f"{int((index < 0).sum())} image(s) of the {split} split have no {kind} cached")
        if key == "pooled":
            array = self.train_pooled if train else self.eval_pooled
        else:
            array = (self.train_cut if train else self.eval_cut)[int(key)]
        return array, index

    def _gather(self, key: str | int, split: str) -> np.ndarray:
        array, index = self.rows(key, split)
        return array[index]

    def with_splits(self, splits: Sequence[str]) -> FeatureCache:
        """The same arrays serving another split assignment (one fold of a cross-validation)."""
        if len(splits) != len(self.splits):
            raise ValueError(f"{len(splits)} split names for a cache of {len(self.splits)} images")
        return dataclasses.replace(self, splits=tuple(splits))


def _cut_outputs(
    backbone: nn.Module, x: torch.Tensor, wanted: set[str]
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Run the frozen backbone once; return the outputs of the ``wanted`` stages and the pooled features."""
    out = {}
    x = backbone.maxpool(backbone.relu(backbone.bn1(backbone.conv1(x))))
    for name in ("layer1", "layer2", "layer3", "layer4"):
        x = getattr(backbone, name)(x)
        if name in wanted:
            out[name] = x
    return out, torch.flatten(backbone.avgpool(x), 1)


@torch.inference_mode()
def build_feature_cache(
    network: nn.Module,
    images: Sequence[np.ndarray],
    targets: Sequence[int],
    splits: Sequence[str],
    *,
    preprocessing: Preprocessing,
    depths: Iterable[int],
    views: int = 4,
    seed: int = 0,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    max_bytes: int | None = None,
    train_on: Sequence[bool] | None = None,
    evaluate_on: Sequence[bool] | None = None,
    precision: str = "32",
) -> FeatureCache:
    """Compute the cache with ``network.backbone`` in eval mode: ``views`` random training views (the training
    transform) of every image with ``train_on`` (default: the "train" split) and one evaluation view of every
    image with ``evaluate_on`` (default: the other splits). A cross-validation asks for both on every image,
    so that one cache serves all its folds. ``precision``: "32" computes in float32; "bf16" under bfloat16
    autocast (about twice as fast on a CPU with bf16 support and on GPUs; values within bf16 rounding of the
    float32 ones, which the float16 storage rounds again anyway)."""
    depths = _checked_depths(depths, views=views, precision=precision)
    train_idx, eval_idx = _chosen_images(len(images), targets, splits, train_on, evaluate_on)
    _check_size(len(train_idx), len(eval_idx), views, preprocessing.image_size, depths, max_bytes)
    started = time.perf_counter()
    backbone = network.backbone.to(device).eval()
    encoder = _Encoder(backbone, preprocessing, depths, batch_size, device, precision)
    torch.manual_seed(seed)
    train_pooled, train_cut = encoder.encode(images, train_idx, views, train=True)
    eval_pooled, eval_cut = encoder.encode(images, eval_idx, 1, train=False)
    return FeatureCache(
        train_pooled=train_pooled,
        eval_pooled=eval_pooled,
        train_cut=train_cut,
        eval_cut=eval_cut,
        image_targets=np.asarray(targets, dtype=np.int64),
        train_index=_row_index(len(images), train_idx),
        eval_index=_row_index(len(images), eval_idx),
        splits=tuple(splits),
        views=views,
        image_size=preprocessing.image_size,
        build_seconds=time.perf_counter() - started,
        info={"precision": precision},
    )


def _checked_depths(depths: Iterable[int], *, views: int, precision: str) -> list[int]:
    """The unfreeze depths that have a cut, sorted; refuses an unknown ``precision`` and ``views`` < 1."""
    if precision not in CACHE_PRECISIONS:
        raise ValueError(f"cache precision must be one of {', '.join(CACHE_PRECISIONS)}, got {precision!r}")
    depths = sorted({int(d) for d in depths if int(d) in CUT_AFTER})
    if views < 1:
        raise ValueError(f"views must be >= 1, got {views}")
    return depths


def _chosen_images(
    n: int, targets: Sequence[int], splits: Sequence[str], train_on, evaluate_on
) -> tuple[list[int], list[int]]:
    """(indices of the images that get training views, indices of those that get an evaluation view)."""
    if not (len(targets) == len(splits) == n):
        raise ValueError(f"images, targets, splits differ in length: {n}, {len(targets)}, {len(splits)}")
    train_on = [s == "train" for s in splits] if train_on is None else [bool(t) for t in train_on]
    evaluate_on = [s != "train" for s in splits] if evaluate_on is None else [bool(e) for e in evaluate_on]
    return [i for i in range(n) if train_on[i]], [i for i in range(n) if evaluate_on[i]]


def _check_size(
    n_train: int, n_eval: int, views: int, image_size: int, depths: list[int], max_bytes: int | None
) -> None:
    """Raise ``CacheTooLarge`` when the cache would take over ``max_bytes`` (None: no limit)."""
    need = estimate_bytes(n_train=n_train, n_eval=n_eval, views=views, image_size=image_size, depths=depths)
    if max_bytes is not None and need > max_bytes:
        raise CacheTooLarge(
            f"the feature cache would take {need / 1e9:.2f} GB ({n_train} training images x {views} "
            f"views, {n_eval} evaluation views, depths {depths}, {image_size} px), over "
            f"the limit of {max_bytes / 1e9:.2f} GB; raise --cache-max-gb, lower --cache-views or the image "
            "size, or run with --no-cache"
        )


@dataclass(frozen=True)
class _Encoder:
    """The frozen backbone (on ``device``, in eval mode) and how to run it over batches of images."""

    backbone: nn.Module
    preprocessing: Preprocessing
    depths: list[int]
    batch_size: int
    device: str | torch.device
    precision: str

    def encode(
        self, images: Sequence[np.ndarray], idx: list[int], k: int, *, train: bool
    ) -> tuple[np.ndarray, dict[int, np.ndarray]]:
        """``k`` views of each image of ``idx`` (the training transform when ``train``): the pooled features
        (len(idx), k, 2048) and, per depth, the cut activations (len(idx), k, C, H, W), float16."""
        transform = build_transform(self.preprocessing, train=train)
        size, wanted = self.preprocessing.image_size, {CUT_AFTER[d] for d in self.depths}
        pooled = np.zeros((len(idx), k, POOLED), np.float16)
        cut = {d: np.zeros((len(idx), k, *cut_shape(d, size)), np.float16) for d in self.depths}
        jobs = [(row, v, idx[row]) for v in range(k) for row in range(len(idx))]
        for start in range(0, len(jobs), self.batch_size):
            chunk = jobs[start : start + self.batch_size]
            x = torch.stack([transform(to_tensor(images[i])) for _, _, i in chunk]).to(self.device)
            bf16 = self.precision == "bf16"
            with torch.autocast(torch.device(self.device).type, dtype=torch.bfloat16, enabled=bf16):
                outs, feats = _cut_outputs(
                    self.backbone, x.contiguous(memory_format=torch.channels_last), wanted
                )
            rows = [r for r, _, _ in chunk]
            cols = [v for _, v, _ in chunk]
            pooled[rows, cols] = feats.float().cpu().numpy().astype(np.float16)
            for d in self.depths:
                cut[d][rows, cols] = outs[CUT_AFTER[d]].float().cpu().numpy().astype(np.float16)
        return pooled, cut


def _row_index(n: int, chosen: list[int]) -> np.ndarray:
    """(n,) the row of each image in arrays over the ``chosen`` images, -1 for an image not chosen."""
    index = np.full(n, -1, np.int64)
    index[chosen] = np.arange(len(chosen))
    return index
