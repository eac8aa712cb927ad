"""Compute the frozen part of a ResNet50 once per experiment and train only the unfrozen part on it.

In a staged trial the layers below the first unfrozen stage never train and always run in eval mode (batch-norm
statistics frozen, no dropout), so their output is a fixed function of the input image. The cache stores, for
K augmented views of every training image and the evaluation view of every val/test image:

* ``pooled``: the backbone's pooled 2048 features (all a stage-1 epoch needs: the head alone trains on them);
* ``cut[d]``: the activations at the input of the first unfrozen stage for unfreeze depth ``d`` (1: layer3's
  output, the input of layer4; 2: layer2's output; 3: layer1's output). Depth 4 unfreezes everything: no cut.

Values are stored as float16 NumPy arrays (compact, and shared zero-copy through Ray's object store). A cached
trial draws one view per training image at every access (random, from torch's seeded generator). This module
needs torch only (never Ray).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from modules.transforms import Preprocessing, build_transform, to_tensor

CUT_AFTER = {1: "layer3", 2: "layer2", 3: "layer1"}  # unfreeze depth -> backbone stage whose output is cached
CHANNELS = {"layer1": 256, "layer2": 512, "layer3": 1024}
STRIDE = {"layer1": 4, "layer2": 8, "layer3": 16}
POOLED = 2048
BYTES = 2  # float16
BUILDS = {"count": 0}  # how many caches this process has built (tests check that trials do not rebuild)


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
    """Cached frozen-backbone outputs per split. Train arrays have shape (N, views, ...), val/test (N, 1, ...)."""

    pooled: dict[str, np.ndarray]
    cut: dict[int, dict[str, np.ndarray]]
    targets: dict[str, np.ndarray]
    views: int
    image_size: int
    build_seconds: float = 0.0
    info: dict = field(default_factory=dict)

    @property
    def depths(self) -> tuple[int, ...]:
        return tuple(sorted(self.cut))

    @property
    def nbytes(self) -> int:
        arrays = [*self.pooled.values(), *(a for per in self.cut.values() for a in per.values())]
        return sum(a.nbytes for a in arrays)


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
) -> FeatureCache:
    """Compute the cache with ``network.backbone`` in eval mode: ``views`` random training views per training
    image (the training transform), one evaluation view per val/test image."""
    import time

    depths = sorted({int(d) for d in depths if int(d) in CUT_AFTER})
    if views < 1:
        raise ValueError(f"views must be >= 1, got {views}")
    n_train = sum(s == "train" for s in splits)
    need = estimate_bytes(
        n_train=n_train,
        n_eval=len(splits) - n_train,
        views=views,
        image_size=preprocessing.image_size,
        depths=depths,
    )
    if max_bytes is not None and need > max_bytes:
        raise CacheTooLarge(
            f"the feature cache would take {need / 1e9:.2f} GB ({n_train} training images x {views} views, "
            f"depths {depths}, {preprocessing.image_size} px), over the limit of {max_bytes / 1e9:.2f} GB; "
            "raise --cache-max-gb, lower --cache-views or the image size, or run with --no-cache"
        )
    started = time.perf_counter()
    backbone = network.backbone.to(device).eval()
    wanted = {CUT_AFTER[d] for d in depths}
    torch.manual_seed(seed)
    pooled: dict[str, np.ndarray] = {}
    cut: dict[int, dict[str, np.ndarray]] = {d: {} for d in depths}
    target_out: dict[str, np.ndarray] = {}
    for split in ("train", "val", "test"):
        idx = [i for i, s in enumerate(splits) if s == split]
        k = views if split == "train" else 1
        transform = build_transform(preprocessing, train=split == "train")
        target_out[split] = np.asarray([targets[i] for i in idx], dtype=np.int64)
        pooled[split] = np.zeros((len(idx), k, POOLED), np.float16)
        for d in depths:
            cut[d][split] = np.zeros((len(idx), k, *cut_shape(d, preprocessing.image_size)), np.float16)
        jobs = [(row, v, idx[row]) for v in range(k) for row in range(len(idx))]
        for start in range(0, len(jobs), batch_size):
            chunk = jobs[start : start + batch_size]
            x = torch.stack([transform(to_tensor(images[i])) for _, _, i in chunk]).to(device)
            outs, feats = _cut_outputs(backbone, x.contiguous(memory_format=torch.channels_last), wanted)
            rows = [r for r, _, _ in chunk]
            cols = [v for _, v, _ in chunk]
            pooled[split][rows, cols] = feats.float().cpu().numpy().astype(np.float16)
            for d in depths:
                cut[d][split][rows, cols] = outs[CUT_AFTER[d]].float().cpu().numpy().astype(np.float16)
    BUILDS["count"] += 1
    return FeatureCache(
        pooled, cut, target_out, views, preprocessing.image_size, build_seconds=time.perf_counter() - started
    )


class CachedTail(nn.Module):
    """The part of a ``ResNet50Classifier`` above the cut for unfreeze depth ``depth``, sharing its modules.

    Input ``(N, 2048)`` pooled features: the head alone (stage 1). Input ``(N, C, H, W)`` cut activations: the
    stages above the cut, average pooling, then the head (stage 2). It keeps ``backbone``, ``head`` and
    ``stage_modules`` so that ``StagedFineTuning`` freezes and unfreezes it exactly as the full network.
    """

    def __init__(self, network: nn.Module, depth: int) -> None:
        super().__init__()
        if depth not in CUT_AFTER:
            raise ValueError(f"no cut for unfreeze depth {depth}; cached depths are {sorted(CUT_AFTER)}")
        self.backbone = network.backbone
        self.head = network.head
        self._stage_modules = network.stage_modules
        self.depth = depth
        self.tail_names = network.stage_names(depth)

    def stage_modules(self, depth: int) -> list[nn.Module]:
        return self._stage_modules(depth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 2:
            return self.head(x)
        for name in self.tail_names:
            x = getattr(self.backbone, name)(x)
        return self.head(torch.flatten(self.backbone.avgpool(x), 1))


class CachedViews(Dataset):
    """(features, label) from an (N, K, ...) float16 array; training draws one of the K views per access."""

    def __init__(self, features: np.ndarray, targets: np.ndarray, *, train: bool) -> None:
        self.features = features
        self.targets = torch.as_tensor(targets)
        self.train = train

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int):
        return self.__getitems__([i])

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """A whole batch in one NumPy gather (the DataLoader calls this instead of one item at a time)."""
        idx = np.asarray(indices)
        k = self.features.shape[1]
        views = (
            torch.randint(k, (len(idx),)).numpy() if self.train and k > 1 else np.zeros(len(idx), np.int64)
        )
        batch = torch.from_numpy(self.features[idx, views].astype(np.float32))
        return batch, self.targets[torch.from_numpy(idx)]


def _batch_as_is(batch):
    """``CachedViews.__getitems__`` returns a collated batch already."""
    return batch


class CachedDataModule(pl.LightningDataModule):
    """Loaders over a ``FeatureCache``: pooled features before ``stage2_epoch``, cut activations from then on
    (use with ``reload_dataloaders_every_n_epochs=1``)."""

    def __init__(
        self, cache: FeatureCache, *, depth: int, stage2_epoch: int, batch_size: int = 16, seed: int = 0
    ):
        super().__init__()
        if depth not in cache.cut and stage2_epoch < 10**6:
            raise ValueError(
                f"the cache holds depths {cache.depths}, not the requested unfreeze depth {depth}"
            )
        self.cache, self.depth, self.stage2_epoch = cache, depth, stage2_epoch
        self.batch_size, self.seed = batch_size, seed

    def _features(self, split: str) -> np.ndarray:
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        if epoch < self.stage2_epoch or self.depth not in self.cache.cut:
            return self.cache.pooled[split]
        return self.cache.cut[self.depth][split]

    def _loader(self, split: str) -> DataLoader:
        ds = CachedViews(self._features(split), self.cache.targets[split], train=split == "train")
        gen = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            ds, batch_size=self.batch_size, shuffle=split == "train", generator=gen, collate_fn=_batch_as_is
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
