"""Nested cross-validation (--cv K) and the leaky --split random contrast."""

import csv
import json
import shutil

import numpy as np
import pytest

from modules.checkpoint import eval_transform, load_classifier, predict_probabilities, uses_flip_tta
from modules.dataset import prepare_data
from modules.ingest import load_image_set
from modules.split import groups_across_splits
from modules.statistics import classification_metrics, group_bootstrap, scores
from tests.helpers import TINY_SEARCH as TINY
from tests.helpers import scan, write_image
from tuning import search
from tuning.cli import run_main
from tuning.trainable import SharedCache


@pytest.fixture
def duplicated_set(tmp_path):
    """12 distinct scans per class, each of the first 8 per class saved twice more (exact duplicates)."""
    root = tmp_path / "dups"
    for label, base in (("yes", 300), ("no", 400)):
        for i in range(12):
            pixels = scan(base + i, mass=label == "yes")
            copies = 3 if i < 8 else 1
            for c in range(copies):
                write_image(root / label / f"{label}{i}_{c}.png", pixels)
    return root


def test_cv_folds_test_every_image_once_and_keep_duplicates_together(duplicated_set):
    data = prepare_data(duplicated_set, seed=3)
    folds = data.cv_folds(4)
    assert len(folds) == 4
    tested = np.zeros(len(data.splits), int)
    for f, fold in enumerate(folds):
        assert fold.fold["index"] == f and fold.fold["k"] == 4
        assert groups_across_splits(fold.groups, fold.splits) == 0
        assert {"train", "val", "test"} <= set(fold.splits)
        test_labels = {data.images.labels[i] for i in fold.indices("test")}
        assert test_labels == {"yes", "no"}  # stratified
        tested += np.asarray([s == "test" for s in fold.splits])
    assert tested.tolist() == [1] * len(data.splits)
    # the same seed gives the same folds; another seed other folds
    assert [f.splits for f in data.cv_folds(4)] == [f.splits for f in folds]
    other = prepare_data(duplicated_set, seed=4).cv_folds(4)
    assert [f.splits for f in other] != [f.splits for f in folds]


def test_too_many_folds_are_refused_with_the_count(small_set):
    data = prepare_data(small_set)
    with pytest.raises(ValueError, match="20 folds need at least 20 distinct images"):
        data.cv_folds(20)


def test_random_split_lets_duplicates_straddle_and_says_so(duplicated_set):
    grouped = prepare_data(duplicated_set, seed=0)
    leaky = prepare_data(duplicated_set, seed=0, split="random")
    assert groups_across_splits(grouped.groups, grouped.splits) == 0
    assert grouped.data_info()["leaky"] is False
    assert groups_across_splits(leaky.groups, leaky.splits) > 0
    info = leaky.data_info()
    assert info["leaky"] is True and info["split_mode"] == "random" and info["groups_across_splits"] > 0
    crossing = [groups_across_splits(f.groups, f.splits) for f in leaky.cv_folds(3)]
    assert max(crossing) > 0
    with pytest.raises(ValueError, match="unknown split mode 'files'"):
        prepare_data(duplicated_set, split="files")


def test_trials_never_receive_the_test_images(duplicated_set):
    data = prepare_data(duplicated_set, seed=1)
    td = data.trial_data(exclude_test=True)
    n_test = data.splits.count("test")
    assert "test" not in td.splits and len(td.images) == len(data.splits) - n_test
    shared = SharedCache(ref=None, splits=data.splits)
    assert "test" not in shared.splits and shared.splits.count("") == n_test


def test_group_bootstrap_does_not_count_a_duplicate_as_new_evidence():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 20)
    probs = np.clip(y * 0.3 + rng.normal(0.35, 0.25, 40), 0, 1)  # about 75% accurate
    distinct = group_bootstrap(probs, y, [f"g{i}" for i in range(40)], seed=0)
    # every picture five times: as groups, the same evidence as before; as independent images, 5x as much
    y5, p5 = np.repeat(y, 5), np.repeat(probs, 5)
    grouped = group_bootstrap(p5, y5, [f"g{i}" for i in np.repeat(np.arange(40), 5)], seed=0)
    naive = group_bootstrap(p5, y5, [f"i{i}" for i in range(200)], seed=0)
    width = {
        name: iv["accuracy"][1] - iv["accuracy"][0]
        for name, iv in (("distinct", distinct), ("grouped", grouped), ("naive", naive))
    }
    assert abs(width["grouped"] - width["distinct"]) < 0.25 * width["distinct"]
    assert width["grouped"] > 1.7 * width["naive"]
    point = scores(np.stack([1 - p5, p5], axis=1), y5, 1)["accuracy"]
    assert grouped["accuracy"][0] <= point <= grouped["accuracy"][1]


def test_cv_scores_agree_with_the_report_metrics_for_two_and_three_classes():
    rng = np.random.default_rng(1)
    for k, positive in ((2, 1), (2, 0), (3, None)):
        y = rng.integers(0, k, 60)
        logits = rng.normal(size=(60, k)) + 1.5 * np.eye(k)[y]
        probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        classes = ["a", "b", "c"][:k]
        full = classification_metrics(probs, y, classes, positive=positive, majority_baseline=0.5)
        mine = scores(probs, y, positive)
        assert set(mine) == (
            {"accuracy", "auroc", "sensitivity", "specificity"}
            if k == 2
            else {"accuracy", "auroc_macro", "recall_macro"}
        )
        for key, value in mine.items():
            assert value == pytest.approx(full[key]), (k, positive, key)


def _run(args) -> int:
    return run_main(search.main, args)


def test_cv_search_end_to_end_then_resume_keeps_finished_folds(ray_local, search_phantom, tmp_path, capsys):
    run = tmp_path / "cv"
    args = [
        "--space", "resnet_stage2", "--data", str(search_phantom), "--weights", "none",
        "--num-samples", "1", "--max-epochs", "4", "--grace-period", "4", "--cv", "2",
        "--out", str(run), *TINY,
    ]  # fmt: skip
    assert _run(args) == 0
    report = json.loads((run / "report.json").read_text())
    assert report["kind"] == "cv" and report["cv"]["k"] == 2 and len(report["cv"]["folds"]) == 2
    pooled = report["metrics"]["pooled"]
    images = load_image_set(search_phantom)
    assert pooled["n"] == len(images.records)
    assert pooled["accuracy_ci95"][0] <= pooled["accuracy"] <= pooled["accuracy_ci95"][1]
    assert "bootstrap over groups (copies, patients, volumes)" in pooled["interval_method"]
    assert report["search"]["cache"]["trials_on_cache"] == 2  # one trial per fold, both on the cache
    rows = list(csv.DictReader((run / "predictions.csv").open()))
    assert sorted(r["path"] for r in rows) == sorted(r.path for r in images.records)  # each image once
    for f in (1, 2):
        fold_report = json.loads((run / f"fold-{f}" / "report.json").read_text())
        assert fold_report["data"]["fold"]["index"] == f - 1
        assert fold_report["data"]["groups_across_splits"] == 0
        assert fold_report["trained_on_feature_cache"] is True
        split = {r["path"]: r["split"] for r in csv.DictReader((run / f"fold-{f}" / "split.csv").open())}
        tested = {r["path"] for r in rows if r["fold"] == str(f)}
        assert tested == {p for p, s in split.items() if s == "test"}
    # the refit trained on the cache, yet its checkpoint is the whole network: it predicts what the fold said
    # (with the test-time augmentation the checkpoint names)
    network, meta = load_classifier(run / "fold-1" / "model.pt")
    by_path = {r.path: r.pixels for r in images.records}
    fold1 = [r for r in rows if r["fold"] == "1"]
    pixels = [by_path[r["path"]] for r in fold1]
    probs = predict_probabilities(network, pixels, eval_transform(meta), flip=uses_flip_tta(meta))
    assert np.allclose(probs[:, 1], [float(r["prob_yes"]) for r in fold1], atol=2e-2)
    capsys.readouterr()

    # a crash after fold 1: resume keeps fold 1 as it was and redoes only fold 2
    before = (run / "fold-1" / "predictions.csv").read_text()
    (run / "report.md").unlink()  # report.json may be there already: the run is complete only with both
    (run / "fold-2" / "predictions.csv").unlink()
    shutil.rmtree(run / "fold-2" / "ray")
    assert _run(["--resume", str(run)]) == 0
    out = capsys.readouterr().out
    assert "fold 1 of 2: finished earlier, kept" in out and "=== fold 2 of 2" in out
    assert (run / "fold-1" / "predictions.csv").read_text() == before
    again = json.loads((run / "report.json").read_text())
    assert again["metrics"]["pooled"]["n"] == pooled["n"]


def test_cv_flags_are_checked_before_ray(tmp_path, capsys):
    assert _run(["--cv", "1", "--out", str(tmp_path / "x")]) == 2
    assert "--cv must be 0 (one split) or a number of folds >= 2, got 1" in capsys.readouterr().err


def test_an_ensemble_larger_than_the_search_is_refused(tmp_path, capsys):
    assert _run(["--num-samples", "2", "--ensemble", "3", "--out", str(tmp_path / "x")]) == 2
    assert "--ensemble must be within 1..--num-samples (2), got 3" in capsys.readouterr().err


def test_repeated_cv_reports_each_repeat_and_the_spread_across_them(
    ray_local, search_phantom, tmp_path, capsys
):
    """--cv 2 --repeats 2: two cross-validations on split seeds 7 and 8, each complete in its own folder, and a
    report whose mean and SD are those of the repeats' pooled values; resume keeps what finished."""
    run = tmp_path / "rep"
    args = [
        "--space", "baseline_cnn", "--data", str(search_phantom), "--num-samples", "1", "--max-epochs", "1",
        "--grace-period", "1", "--cv", "2", "--repeats", "2", "--split-seed", "7", "--set", "cnn_depth=2",
        "--out", str(run), *TINY,
    ]  # fmt: skip
    assert _run(args) == 0
    report = json.loads((run / "report.json").read_text())
    assert report["kind"] == "cv-repeats" and [r["split_seed"] for r in report["repeats"]] == [7, 8]
    accuracies = []
    for seed in (7, 8):
        inner = json.loads((run / f"repeat-{seed}" / "report.json").read_text())
        assert inner["kind"] == "cv" and inner["data"]["split_seed"] == seed
        accuracies.append(inner["metrics"]["pooled"]["accuracy"])
    spread = report["metrics"]["across_repeats"]["accuracy"]
    assert spread["values"] == accuracies and spread["mean"] == pytest.approx(sum(accuracies) / 2)
    assert "| mean ± SD |" in (run / "report.md").read_text()
    assert "mean ± SD" in (run / "report.html").read_text()
    capsys.readouterr()
    assert _run(["--resume", str(run)]) == 0  # every repeat finished: nothing is redone
    assert capsys.readouterr().out.count("complete already") == 2


def test_repeats_need_a_cross_validation(capsys):
    assert _run(["--space", "baseline_cnn", "--repeats", "3", "--no-dashboard"]) == 2
    assert "--repeats 3 repeats a cross-validation; expected --cv K too" in capsys.readouterr().err
