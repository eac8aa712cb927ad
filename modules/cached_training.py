"""Train the part of a ResNet50 above the frozen cut on a ``FeatureCache`` (``modules.feature_cache``).

``CachedTail`` is the network above the cut, sharing the full network's modules; ``CachedDataModule`` serves
pooled features during stage 1 and the cut activations from stage 2 on. A cached trial draws one view per
training image at every access (random, from torch's seeded generator). This module needs torch and Lightning
only (never Ray).
"""

from __future__ import annotations

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from modules.feature_cache import CUT_BLOCKS, FeatureCache


class CachedTail(nn.Module):
    """The part of a ``ResNet50Classifier`` above the cut below its last ``blocks`` bottleneck blocks (3, 9,
    13 for unfreeze depth 1, 2, 3: ``modules.networks.depth_blocks``), sharing its modules.

    Input ``(N, 2048)`` pooled features: the head alone (stage 1). Input ``(N, C, H, W)`` cut activations: the
    blocks above the cut, average pooling, then the head (stage 2). It keeps ``backbone``, ``head``,
    ``stage_modules`` and ``block_modules`` so that ``StagedFineTuning`` freezes and unfreezes it exactly as
    the full network.
    """

    def __init__(self, network: nn.Module, blocks: int) -> None:
        super().__init__()
        if blocks not in CUT_BLOCKS:
            raise ValueError(
                f"no cut below the last {blocks!r} blocks; cuts exist for {CUT_BLOCKS[0]}..{CUT_BLOCKS[-1]} "
                "trainable blocks"
            )
        self.backbone = network.backbone
        self.head = network.head
        self.layout = network.layout
        self._stage_modules = network.stage_modules
        self._block_modules = network.block_modules
        self.blocks = blocks
        self.tail_names = network.block_names(blocks)

    def stage_modules(self, depth: int) -> list[nn.Module]:
        return self._stage_modules(depth)

    def block_modules(self, blocks: int) -> list[nn.Module]:
        return self._block_modules(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 2:
            return self.head(x)
        for name in self.tail_names:
            x = self.backbone.get_submodule(name)(x)
        return self.head(torch.flatten(self.backbone.avgpool(x), 1))


class CachedViews(Dataset):
    """(features, label) from rows of an (M, K, ...) float16 array; training draws one of the K views per
    access. ``rows[i]`` is the row of the i-th image of the split (default: row i)."""

    def __init__(
        self, features: np.ndarray, targets: np.ndarray, *, train: bool, rows: np.ndarray | None = None
    ) -> None:
        self.features = features
        self.targets = torch.as_tensor(targets)
        self.train = train
        self.rows = np.arange(len(targets)) if rows is None else np.asarray(rows)
        if len(self.rows) != len(self.targets):
            raise ValueError(f"{len(self.rows)} rows for {len(self.targets)} labels")

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        return self.__getitems__([i])

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """A whole batch in one NumPy gather (the DataLoader calls this instead of one item at a time)."""
        idx = np.asarray(indices)
        k = self.features.shape[1]
        views = (
            torch.randint(k, (len(idx),)).numpy() if self.train and k > 1 else np.zeros(len(idx), np.int64)
        )
        batch = torch.from_numpy(self.features[self.rows[idx], views].astype(np.float32))
        return batch, self.targets[torch.from_numpy(idx)]


def _batch_as_is(batch):
    """``CachedViews.__getitems__`` returns a collated batch already."""
    return batch


class CachedDataModule(pl.LightningDataModule):
    """Loaders over a ``FeatureCache``: pooled features before ``stage2_epoch``, from then on the activations of
    the cut below the last ``blocks`` blocks (use with ``reload_dataloaders_every_n_epochs=1``)."""

    def __init__(
        self, cache: FeatureCache, *, blocks: int, stage2_epoch: int, batch_size: int = 16, seed: int = 0
    ):
        super().__init__()
        self.cache, self.blocks, self.stage2_epoch = cache, blocks, stage2_epoch
        self.batch_size, self.seed = batch_size, seed

    def _epoch(self) -> int:
        return self.trainer.current_epoch if self.trainer is not None else 0

    def _key(self) -> str | int:
        epoch = self._epoch()
        if epoch < self.stage2_epoch:
            return "pooled"
        if self.blocks not in self.cache.train_cut:
            raise ValueError(
                f"stage 2 starts at epoch {epoch} training the last {self.blocks} blocks, but the cache holds "
                f"only the cuts below the last {list(self.cache.blocks)} blocks"
            )
        return self.blocks

    def _loader(self, split: str) -> DataLoader:
        array, rows = self.cache.rows(self._key(), split)
        targets = self.cache.image_targets[self.cache.members(split)]
        if len(rows) == 0:
            raise ValueError(f"the {split} split is empty; expected at least one image in it")
        ds = CachedViews(array, targets, train=split == "train", rows=rows)
        # the loaders are rebuilt every epoch: seeding by (seed, epoch) draws a new order each epoch, as the
        # plain path's one generator does, and the same order on every rerun
        seed = int(np.random.SeedSequence([self.seed, self._epoch()]).generate_state(1)[0])
        gen = torch.Generator().manual_seed(seed)
        return DataLoader(
            ds, batch_size=self.batch_size, shuffle=split == "train", generator=gen, collate_fn=_batch_as_is
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
