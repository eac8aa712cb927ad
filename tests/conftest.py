"""Fixtures: small images written by the tests, the real data set when it is present, a local Ray, the tiny
trained CNN (helpers they use live in ``tests/helpers.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import TinyRun, real_data_dir, scan, train_tiny_run, write_image


@pytest.fixture
def real_data() -> Path:
    path = real_data_dir()
    if path is None:
        pytest.skip("real data absent: set MRI_DATA to a folder with yes/ and no/")
    return path


@pytest.fixture
def small_set(tmp_path: Path) -> Path:
    """root/yes and root/no with 8 distinct images each."""
    root = tmp_path / "set"
    for i in range(8):
        write_image(root / "yes" / f"y{i}.png", scan(100 + i, mass=True))
        write_image(root / "no" / f"n{i}.jpg", scan(200 + i), fmt="JPEG")
    return root


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


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> TinyRun:
    """The tiny CNN run (trained once per test session: training is the slow part; every test only reads it)."""
    return train_tiny_run(tmp_path_factory.mktemp("tiny_run"))
