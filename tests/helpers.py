"""Helpers shared by the tests: small images they write, the flags of a tiny search, the real data when it is
present, and the tiny trained CNN that the checkpoint, evaluate and predict tests read."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from modules.dataset import PreparedData, prepare_data
from modules.phantom import make_phantom
from tuning.config import TrainConfig
from tuning.training import run_training

REPO = Path(__file__).resolve().parents[1]


def real_data_dir() -> Path | None:
    """The real Kaggle set: $MRI_DATA, else ../shared/data/brain_mri beside the checkout; None when absent."""
    env = os.environ.get("MRI_DATA")
    candidates = [Path(env)] if env else [REPO.parent / "shared" / "data" / "brain_mri"]
    for c in candidates:
        if (c / "yes").is_dir() and (c / "no").is_dir():
            return c
    return None


def real_weights_file() -> Path | None:
    env = os.environ.get("MRI_WEIGHTS")
    path = Path(env) if env else REPO.parent / "shared" / "weights" / "resnet50_imagenet.pth"
    return path if path.is_file() else None


def scan(seed: int, size: int = 48, *, mass: bool = False) -> np.ndarray:
    """A distinct little grayscale picture (uint8, size x size) with a head-like disc and random texture."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2, xx - size / 2)
    img = np.where(r < size * 0.42, 90 + 60 * rng.random((size, size)), 0.0)
    img += np.where(r < size * 0.42, 40 * np.sin(xx * rng.uniform(0.1, 0.5) + rng.uniform(0, 6)), 0)
    if mass:
        cy, cx = rng.integers(size // 3, 2 * size // 3, 2)
        img = np.where(np.hypot(yy - cy, xx - cx) < size / 8, 245, img)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_image(path: Path, pixels: np.ndarray, fmt: str = "PNG", mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(pixels)
    if mode:
        img = img.convert(mode)
    img.save(path, format=fmt)
    return path


# Flags that make a search's trials tiny: 32 px inputs, small batches, one CPU per trial, no dashboard.
TINY_SEARCH = [
    "--image-size",
    "32",
    "--resize",
    "36",
    "--batch-size",
    "8",
    "--no-dashboard",
    "--cpus-per-trial",
    "1",
]


def subprocess_env() -> dict[str, str]:
    """Environment for a command run in a subprocess by a test: this checkout importable, output unbuffered,
    and never an outside Ray cluster."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    return env


TINY = {
    "model": "cnn",
    "crop": "none",
    "cnn_depth": 2,
    "cnn_width": 8,
    "image_size": 32,
    "resize": 36,
    "batch_size": 8,
    "max_epochs": 2,
    "threads": 2,
}


@dataclass(frozen=True)
class TinyRun:
    phantom: Path  # root/yes, root/no
    data: PreparedData
    run_dir: Path  # tuning.train's folder: model.pt, report.json, split.csv
    report: dict

    @property
    def checkpoint(self) -> Path:
        return self.run_dir / "model.pt"

    def write_split(self, split: str, dest: Path) -> Path:
        """Copy the files of one split (by the run's PreparedData) into dest/<label>/; returns dest."""
        for i in self.data.indices(split):
            rec = self.data.images.records[i]
            target = dest / rec.path
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.phantom / rec.path, target)
        return dest


def train_tiny_run(base: Path) -> TinyRun:
    """Train a depth-2 CNN on 2 x 20 phantom images of 64 px for 2 epochs, into ``base``."""
    phantom = make_phantom(base / "phantom", n_per_class=20, size=64, seed=5)
    data = prepare_data(phantom, seed=0)
    report = run_training(TrainConfig.from_dict(TINY), data, base / "run", command="test", progress=False)
    return TinyRun(phantom, data, base / "run", report)


def search_settings(*argv: str):
    """The ``SearchSettings`` that ``python -m tuning.search ARGV`` would run (parsed, not run)."""
    from tuning.config import TrainConfig
    from tuning.flags import values_of
    from tuning.search import get_args_parser
    from tuning.settings import MODEL_FLAGS, SearchSettings
    from tuning.settings_io import settings_from_flags

    args = get_args_parser().parse_args(list(argv))
    values = values_of(args, SearchSettings)
    return settings_from_flags(values, values_of(args, TrainConfig, only=MODEL_FLAGS), args.set, list(argv))
