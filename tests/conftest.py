"""Shared fixtures: small images written by the tests, and the real data set when it is present."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

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


@pytest.fixture
def real_data() -> Path:
    path = real_data_dir()
    if path is None:
        pytest.skip("real data absent: set MRI_DATA to a folder with yes/ and no/")
    return path


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


@pytest.fixture
def small_set(tmp_path: Path) -> Path:
    """root/yes and root/no with 8 distinct images each."""
    root = tmp_path / "set"
    for i in range(8):
        write_image(root / "yes" / f"y{i}.png", scan(100 + i, mass=True))
        write_image(root / "no" / f"n{i}.jpg", scan(200 + i), fmt="JPEG")
    return root


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


@pytest.fixture(scope="module")
def search_phantom(tmp_path_factory):
    """A tiny phantom set (14 per class, 64 px) for end-to-end searches."""
    from modules.phantom import make_phantom

    return make_phantom(tmp_path_factory.mktemp("phantom"), n_per_class=14, size=64, seed=5)


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray for the tests of one module (2 CPUs, no dashboard), shut down after them."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()
