"""A LightningDataModule over images already decoded in memory (see ``modules.ingest``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from modules.transforms import Preprocessing, build_transform, to_tensor


class ArrayImageDataset(Dataset):
    """(image, label) pairs from in-memory grayscale arrays; the transform runs on each access."""

    def __init__(self, images: Sequence[np.ndarray], targets: Sequence[int], transform) -> None:
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} labels")
        self.images = [to_tensor(p) for p in images]  # shares memory with the arrays
        self.targets = torch.as_tensor(np.asarray(targets, dtype=np.int64))
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(self.images[i]), self.targets[i]


class MRIDataModule(pl.LightningDataModule):
    """Train/val/test loaders from decoded arrays and a split assignment ("train"/"val"/"test" per image).

    Random transforms apply to the training split only. ``seed`` fixes the shuffling order; the augmentations
    draw from torch's random state, which the training run seeds (``pl.seed_everything``).
    """

    def __init__(
        self,
        images: Sequence[np.ndarray],
        targets: Sequence[int],
        splits: Sequence[str],
        *,
        preprocessing: Preprocessing | None = None,
        batch_size: int = 16,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not (len(images) == len(targets) == len(splits)):
            raise ValueError(
                f"images, targets, splits differ in length: {len(images)}, {len(targets)}, {len(splits)}"
            )
        if batch_size < 1 or num_workers < 0:
            raise ValueError(f"need batch_size >= 1 and num_workers >= 0, got {batch_size}, {num_workers}")
        self.preprocessing = preprocessing or Preprocessing()
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.datasets: dict[str, ArrayImageDataset] = {}
        for name in ("train", "val", "test"):
            idx = [i for i, s in enumerate(splits) if s == name]
            self.datasets[name] = ArrayImageDataset(
                [images[i] for i in idx],
                [targets[i] for i in idx],
                build_transform(self.preprocessing, train=name == "train"),
            )

    def _loader(self, name: str, *, shuffle: bool) -> DataLoader:
        ds = self.datasets[name]
        if len(ds) == 0:
            raise ValueError(f"the {name} split is empty; expected at least one image in it")
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            ds,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            generator=generator,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
