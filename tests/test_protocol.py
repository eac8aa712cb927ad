"""The protocol end to end: the images a search is scored on cannot move anything that chooses the model.

A fold of a cross-validation is searched twice, once as it is and once with its held-out images corrupted
(their pixels replaced by noise and their labels flipped) after the folds were cut. Everything that chooses
(every trial's config and validation curve, ASHA's stops, the best trial, the refit's epoch count and config)
must be identical; only the test result may change. The ResNet space runs on the feature cache, which holds
the held-out images too (a cross-validation caches every image), so the test also checks that the cache
masks them from the trials.
"""

from __future__ import annotations

import csv
import dataclasses

import numpy as np
import pytest

from modules.dataset import PreparedData, prepare_data
from tests.helpers import search_settings
from tuning.backbone import build_cache, search_weights
from tuning.ray_runtime import share_cache
from tuning.split_search import search_split

pytestmark = pytest.mark.slow

DECISIONS = ("status", "iterations", "best_value", "best_iteration", "last_value")


def corrupt_held_out(fold: PreparedData) -> PreparedData:
    """``fold`` with its test images replaced by noise and relabelled to another class; splits unchanged."""
    rng = np.random.default_rng(0)
    classes = fold.images.classes
    records = list(fold.images.records)
    for i in fold.indices("test"):
        rec = records[i]
        noise = rng.integers(0, 256, rec.pixels.shape, dtype=np.uint8)
        other = classes[(classes.index(rec.label) + 1) % len(classes)]
        records[i] = dataclasses.replace(rec, pixels=noise, label=other)
    return dataclasses.replace(fold, images=dataclasses.replace(fold.images, records=records))


def search_fold(fold: PreparedData, full: PreparedData, run_dir, space: str) -> tuple[dict, list[dict], dict]:
    s = search_settings(
        "--space", space, "--data", str(full.images.source), "--weights", "none", "--num-samples", "3",
        "--max-epochs", "4", "--grace-period", "2" if space == "baseline_cnn" else "4", "--max-concurrent", "1",
        "--cache-views", "2", "--image-size", "32", "--resize", "36", "--batch-size", "8", "--no-dashboard",
        "--cpus-per-trial", "1", "--set", "cnn_depth=2", "--out", str(run_dir),
    )  # fmt: skip
    spec = s.spec()
    weights = search_weights(spec, s)
    cache = share_cache(s, build_cache(s, spec, full, weights, every_image=True))
    outputs: dict = {}
    report = search_split(s, fold, spec, weights, cache, resume=False, test_outputs=outputs)
    with open(run_dir / "trials.csv", newline="") as fh:
        trials = [
            {k: v for k, v in row.items() if k not in ("trial_id", "time_s", "compute_s", "node_id")}
            for row in csv.DictReader(fh)
        ]
    return report, trials, outputs


@pytest.mark.parametrize("space", ["baseline_cnn", "resnet_stage2"])
def test_corrupting_the_held_out_fold_changes_no_decision(ray_local, search_phantom, tmp_path, space):
    data = prepare_data(search_phantom, seed=0)
    fold = data.cv_folds(2)[0]
    bad_fold = corrupt_held_out(fold)
    bad_data = dataclasses.replace(data, images=bad_fold.images)
    clean, clean_trials, clean_test = search_fold(fold, data, tmp_path / "clean", space)
    dirty, dirty_trials, dirty_test = search_fold(bad_fold, bad_data, tmp_path / "dirty", space)
    assert clean_trials == dirty_trials  # every config, curve and ASHA stop
    for key in ("config", "best_value", "best_iteration", "iterations"):
        assert clean["best_trial"][key] == dirty["best_trial"][key], key
    assert clean["config"] == dirty["config"] and clean["best_epoch"] == dirty["best_epoch"]
    # the corruption did reach the one place that may see it: the test of the refit
    assert not np.allclose(clean_test["probs_all"].numpy(), dirty_test["probs_all"].numpy())
    assert (clean_test["labels"] != dirty_test["labels"]).all()
