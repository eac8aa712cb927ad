"""A tiny CNN trained once per test session on a tiny phantom set, shared by the tests of tuning.evaluate,
tuning.predict and modules.checkpoint (training is the slow part; every test only reads the run)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from modules.dataset import PreparedData, prepare_data
from modules.phantom import make_phantom
from tuning.engine import TrainConfig
from tuning.train import run_training

TINY = {
    "model": "cnn",
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


_RUNS: dict[str, TinyRun] = {}


def tiny_run(tmp_path_factory) -> TinyRun:
    """Train (once per pytest session) a depth-2 CNN on 2 x 20 phantom images of 64 px for 2 epochs."""
    key = str(tmp_path_factory.getbasetemp())
    if key not in _RUNS:
        base = tmp_path_factory.mktemp("tiny_run")
        phantom = make_phantom(base / "phantom", n_per_class=20, size=64, seed=5)
        data = prepare_data(phantom, seed=0)
        report = run_training(TrainConfig.from_dict(TINY), data, base / "run", command="test", progress=False)
        _RUNS[key] = TinyRun(phantom, data, base / "run", report)
    return _RUNS[key]
