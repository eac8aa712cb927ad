"""Compute the frozen part of a ResNet50 once per experiment, so that trials train only the unfrozen part.

In a staged trial the layers below the first unfrozen block never train and always run in eval mode (batch-norm
statistics frozen, no dropout), so their output is a fixed function of the input image. The cache stores, for
K augmented views of every training image and the evaluation view of every val/test image:

* ``pooled``: the backbone's pooled 2048 features (all a stage-1 epoch needs: the head alone trains on them);
* ``cut[b]``: the activations at the input of the first unfrozen block when the last ``b`` bottleneck blocks
  train (1: layer4[1]'s output; 3: layer3's output, the input of layer4; 4: layer3[4]'s output).

A cut is named by the number of trainable blocks above it, whole stages included: unfreeze depth 1, 2, 3 is the
cut of 3, 9, 13 blocks (``modules.networks.depth_blocks``). All 16 blocks (or depth 4) also train the stem: no
cut.

Values are stored as float16 NumPy arrays (compact, and shared zero-copy through Ray's object store);
``modules.cached_training`` trains on them. This module needs torch only (never Ray).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from modules.networks import BLOCK_NAMES, MAX_UNFREEZE_BLOCKS, STAGE_BLOCKS
from modules.transforms import Preprocessing, build_transform, to_tensor

# the trainable blocks above a cut: 1..15 (all 16 also train the stem: no cut)
CUT_BLOCKS = tuple(range(1, MAX_UNFREEZE_BLOCKS))
# channels and stride of every block's output, by stage (in both layouts a stage's blocks share its stride)
CHANNELS = {"layer1": 256, "layer2": 512, "layer3": 1024, "layer4": 2048}
STRIDE = {"layer1": 4, "layer2": 8, "layer3": 16, "layer4": 32}
POOLED = 2048
BYTES = 2  # float16
SPLITS = ("train", "val", "test")
CACHE_PRECISIONS = ("32", "bf16")


class CacheTooLarge(ValueError):
    """The cache would exceed the allowed size; the message gives both and how to proceed."""


def cut_after(blocks: int) -> str:
    """The backbone block whose output is cached for training the last ``blocks`` blocks (the input of the
    first of them): 1 -> "layer4.1", 3 -> "layer3.5" (layer3's output), 4 -> "layer3.4"."""
    if blocks not in CUT_BLOCKS:
        raise ValueError(
            f"no cut below the last {blocks!r} blocks; cuts exist for {CUT_BLOCKS[0]}..{CUT_BLOCKS[-1]} "
            f"trainable blocks ({MAX_UNFREEZE_BLOCKS} also trains the stem)"
        )
    return BLOCK_NAMES[-blocks - 1]


def cut_shape(blocks: int, image_size: int) -> tuple[int, int, int]:
    """(C, H, W) of one image's cut activations below the last ``blocks`` blocks."""
    stage = cut_after(blocks).split(".")[0]
    side = -(-image_size // STRIDE[stage])  # ceil: torchvision's convolutions pad
    return (CHANNELS[stage], side, side)


def estimate_bytes(*, n_train: int, n_eval: int, views: int, image_size: int, blocks: Iterable[int]) -> int:
    """Bytes of a cache for these counts and cuts (trainable blocks above each; float16), before any of it is
    computed."""
    per_view = POOLED + sum(int(np.prod(cut_shape(b, image_size))) for b in set(blocks))
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
    train_cut: dict[int, np.ndarray]  # trainable blocks above the cut -> its activations
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
    def blocks(self) -> tuple[int, ...]:
        """The cuts held, each as the number of trainable blocks above it."""
        return tuple(sorted(self.train_cut))

    @property
    def cut(self) -> dict[int, dict[str, np.ndarray]]:
        """Per cut (trainable blocks above it) and split, the cut activations (a copy; for inspection and
        tests)."""
        return {b: {s: self._gather(b, s) for s in SPLITS} for b in self.blocks}

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
        otherwise. ``key``: "pooled" or a cut (the number of trainable blocks above it)."""
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
    """Run the frozen backbone once; return the outputs of the ``wanted`` blocks (``"layer3.4"``, ...) and
    the pooled features."""
    out = {}
    x = backbone.maxpool(backbone.relu(backbone.bn1(backbone.conv1(x))))
    for stage in STAGE_BLOCKS:
        for i, block in enumerate(getattr(backbone, stage)):
            x = block(x)
            if f"{stage}.{i}" in wanted:
                out[f"{stage}.{i}"] = x
    return out, torch.flatten(backbone.avgpool(x), 1)


@torch.inference_mode()
def build_feature_cache(
    network: nn.Module,
    images: Sequence[np.ndarray],
    targets: Sequence[int],
    splits: Sequence[str],
    *,
    preprocessing: Preprocessing,
    blocks: Iterable[int],
    views: int = 4,
    seed: int = 0,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    max_bytes: int | None = None,
    train_on: Sequence[bool] | None = None,
    evaluate_on: Sequence[bool] | None = None,
    precision: str = "32",
    progress: Callable[[int, int], None] | None = None,
) -> FeatureCache:
    """Compute the cache with ``network.backbone`` in eval mode: ``views`` random training views (the training
    transform) of every image with ``train_on`` (default: the "train" split) and one evaluation view of every
    image with ``evaluate_on`` (default: the other splits); the pooled features and, for each of ``blocks``
    (trainable blocks above a cut; 16, which has none, is skipped), its cut activations. A cross-validation
    asks for both on every image, so that one cache serves all its folds. ``precision``: "32" computes in
    float32; "bf16" under bfloat16 autocast (about twice as fast on a CPU with bf16 support and on GPUs; values
    within bf16 rounding of the float32 ones, which the float16 storage rounds again anyway). ``progress``:
    called with (views done, views in all) after every batch (``modules.progress_lines.ProgressLines`` prints
    a line now and then)."""
    blocks = _checked_blocks(blocks, views=views, precision=precision)
    train_idx, eval_idx = _chosen_images(len(images), targets, splits, train_on, evaluate_on)
    _check_size(len(train_idx), len(eval_idx), views, preprocessing.image_size, blocks, max_bytes)
    started = time.perf_counter()
    backbone = network.backbone.to(device).eval()
    encoder = _Encoder(backbone, preprocessing, blocks, batch_size, device, precision)
    torch.manual_seed(seed)
    total = len(train_idx) * views + len(eval_idx)
    count = (lambda done: progress(done, total)) if progress is not None else None
    train_pooled, train_cut = encoder.encode(images, train_idx, views, train=True, count=count)
    offset = len(train_idx) * views
    after = (lambda done: count(offset + done)) if count is not None else None
    eval_pooled, eval_cut = encoder.encode(images, eval_idx, 1, train=False, count=after)
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


def _checked_blocks(blocks: Iterable[int], *, views: int, precision: str) -> list[int]:
    """The block counts that have a cut, sorted; refuses an unknown ``precision`` and ``views`` < 1."""
    if precision not in CACHE_PRECISIONS:
        raise ValueError(f"cache precision must be one of {', '.join(CACHE_PRECISIONS)}, got {precision!r}")
    blocks = sorted({int(b) for b in blocks if int(b) in CUT_BLOCKS})
    if views < 1:
        raise ValueError(f"views must be >= 1, got {views}")
    return blocks


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
    n_train: int, n_eval: int, views: int, image_size: int, blocks: list[int], max_bytes: int | None
) -> None:
    """Raise ``CacheTooLarge`` when the cache would take over ``max_bytes`` (None: no limit)."""
    need = estimate_bytes(n_train=n_train, n_eval=n_eval, views=views, image_size=image_size, blocks=blocks)
    if max_bytes is not None and need > max_bytes:
        raise CacheTooLarge(
            f"the feature cache would take {need / 1e9:.2f} GB ({n_train} training images x {views} "
            f"views, {n_eval} evaluation views, cuts below the last {blocks} blocks, {image_size} px), over "
            f"the limit of {max_bytes / 1e9:.2f} GB; raise --cache-max-gb, lower --cache-views or the image "
            "size, or run with --no-cache"
        )


@dataclass(frozen=True)
class _Encoder:
    """The frozen backbone (on ``device``, in eval mode) and how to run it over batches of images."""

    backbone: nn.Module
    preprocessing: Preprocessing
    blocks: list[int]  # the cuts, by trainable blocks above them
    batch_size: int
    device: str | torch.device
    precision: str

    def encode(
        self, images: Sequence[np.ndarray], idx: list[int], k: int, *, train: bool, count=None
    ) -> tuple[np.ndarray, dict[int, np.ndarray]]:
        """``k`` views of each image of ``idx`` (the training transform when ``train``): the pooled features
        (len(idx), k, 2048) and, per cut, its activations (len(idx), k, C, H, W), float16."""
        transform = build_transform(self.preprocessing, train=train)
        size, wanted = self.preprocessing.image_size, {cut_after(b) for b in self.blocks}
        pooled = np.zeros((len(idx), k, POOLED), np.float16)
        cut = {b: np.zeros((len(idx), k, *cut_shape(b, size)), np.float16) for b in self.blocks}
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
            for b in self.blocks:
                cut[b][rows, cols] = outs[cut_after(b)].float().cpu().numpy().astype(np.float16)
            if count is not None:
                count(start + len(chunk))
        return pooled, cut


def _row_index(n: int, chosen: list[int]) -> np.ndarray:
    """(n,) the row of each image in arrays over the ``chosen`` images, -1 for an image not chosen."""
    index = np.full(n, -1, np.int64)
    index[chosen] = np.arange(len(chosen))
    return index
