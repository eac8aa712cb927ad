"""Nested cross-validation of a search: ``python -m tuning.search --cv K``.

The images are cut into K stratified folds that keep every duplicate group whole (``--split random``: file by
file, leaky, for contrast). Each fold in turn is the test set: the rest is split into train/val, a whole
search (Ray Tune, ASHA) runs there, its best config is refit there and predicts the held-out fold once. No
search ever sees the images it is scored on. The K out-of-fold predictions cover every image exactly once.

The report gives the pooled metrics with 95% intervals from a percentile bootstrap over duplicate groups
(images of one group are not independent, so whole groups are resampled), the per-fold values with their mean
and standard deviation, and the majority baseline (each fold predicts its training portion's majority class).
A finished fold is kept: ``--resume`` goes on with the first unfinished one.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import time
from pathlib import Path

from ray import tune

from modules.dataset import PreparedData
from modules.files import atomic_write_text, csv_text
from modules.sources import display_path
from modules.weights import WeightsState
from tuning.backbone import build_cache, with_batch_norm_statistics
from tuning.cv_report import cv_report, prediction_fields, write_cv_outputs
from tuning.cv_text import cv_summary
from tuning.ray_runtime import share_cache
from tuning.settings import SearchSettings
from tuning.split_search import search_split
from tuning.tracking import log_result
from tuning.tuner import experiment_path


def run_cv(
    s: SearchSettings, data: PreparedData, spec: dict, weights: WeightsState | None, *, resume: bool
) -> dict | None:
    """The K searches of a nested cross-validation, one per held-out fold, then the pooled report."""
    run_dir = Path(s.run_dir)
    started = time.perf_counter()
    folds = data.cv_folds(s.cv)
    _write_folds(s, data, folds)
    # a random init takes its batch-norm statistics from each fold's training images: a backbone (and a cache)
    # per fold; pretrained weights serve every fold from one cache of every image
    per_fold = weights is not None and weights.random_init
    cache = None if per_fold else build_cache(s, spec, data, weights, every_image=True)
    stored = None  # into Ray's object store before the first fold that still needs a search
    done: list[dict] = []
    for fold in folds:
        f = fold.fold["index"]
        fold_dir = run_dir / f"fold-{f + 1}"
        predictions = fold_dir / "predictions.csv"
        if predictions.is_file() and (fold_dir / "report.json").is_file():
            print(f"\nfold {f + 1} of {s.cv}: finished earlier, kept ({predictions})")
            done.append(_read_fold(fold_dir))
            continue
        fold_dir.mkdir(parents=True, exist_ok=True)
        fs = _fold_settings(s, fold_dir, f)
        fold_resume = resume and tune.Tuner.can_restore(experiment_path(fs))
        counts = {k: fold.splits.count(k) for k in ("train", "val", "test")}
        print(
            f"\n=== fold {f + 1} of {s.cv}: search on train {counts['train']} / val {counts['val']}, "
            f"test {counts['test']} held out"
        )
        fold_weights = with_batch_norm_statistics(fs, spec, fold, weights)
        if per_fold:
            cache = build_cache(fs, spec, fold, fold_weights)
            stored = share_cache(s, cache) if cache is not None else None
        elif stored is None and cache is not None:
            stored = share_cache(s, cache)
        outputs: dict = {}
        report = search_split(
            fs,
            fold,
            spec,
            fold_weights,
            stored,
            resume=fold_resume,
            resume_dir=s.run_dir,
            test_outputs=outputs,
        )
        if report is None:
            return None
        rows = _prediction_rows(fold, outputs)
        atomic_write_text(predictions, csv_text(rows, prediction_fields(data.images.classes)))
        done.append(_read_fold(fold_dir))
    report = cv_report(s, data, done, seconds=time.perf_counter() - started, cache=cache)
    write_cv_outputs(report, done, run_dir)
    log_result(s, report, run_dir, kind="cross-validation")
    print(cv_summary(report, run_dir))
    return report


def _write_folds(s: SearchSettings, data: PreparedData, folds: list[PreparedData]) -> None:
    """Write split.csv (the fold of every image) and print the data and the fold sizes."""
    fold_of = [
        next(f for f, fd in enumerate(folds) if fd.splits[i] == "test") for i in range(len(data.splits))
    ]
    atomic_write_text(Path(s.run_dir) / "split.csv", folds_csv(data, fold_of))
    sizes = [fold_of.count(f) for f in range(s.cv)]
    print(
        f"data: {data.images.source}{' (SYNTHETIC phantom set)' if data.synthetic else ''}: "
        f"{len(data.images.records)} images {data.images.class_counts()}; {s.cv}-fold nested cross-validation, "
        f"{'LEAKY random' if data.leaky else 'grouped'} folds of {sizes} images"
    )


def _fold_settings(s: SearchSettings, fold_dir: Path, f: int) -> SearchSettings:
    """The settings of fold ``f``'s search (0-based): its own run folder and storage, no further folds."""
    return dataclasses.replace(
        s,
        run_dir=str(fold_dir),
        storage=f"{s.storage.rstrip('/')}/fold-{f + 1}" if s.storage else None,
        cv=0,
    )


def folds_csv(data: PreparedData, fold_of: list[int]) -> str:
    """folds.csv: each image's fold (1-based), with its group (copies and subjects) and its subject."""
    rows = [
        {
            "path": display_path(r.path),
            "sha256": r.sha256,
            "label": r.label,
            "group": g,
            "subject": data.subject_of(i),
            "fold": str(f + 1),
        }
        for i, (r, g, f) in enumerate(zip(data.images.records, data.groups, fold_of, strict=True))
    ]
    fields = ["path", "sha256", "label", "group", "subject", "fold"]
    return csv_text(sorted(rows, key=lambda row: row["path"]), fields)


def _prediction_rows(fold: PreparedData, outputs: dict) -> list[dict]:
    """One row per test image of the fold, in the order the refit saw them (the order of ``indices``)."""
    idx = fold.indices("test")
    probs = outputs["probs_all"].numpy().tolist()
    labels = outputs["labels"].numpy().tolist()
    classes = fold.images.classes
    if len(idx) != len(probs):
        raise RuntimeError(f"the refit returned {len(probs)} test predictions for {len(idx)} test images")
    rows = []
    for i, p, y in zip(idx, probs, labels, strict=True):
        rec = fold.images.records[i]
        if int(fold.images.targets[i]) != int(y):
            raise RuntimeError(f"prediction order differs from the test images at {display_path(rec.path)}")
        rows.append(
            {
                "path": display_path(rec.path),
                "label": rec.label,
                "group": fold.groups[i],
                "fold": fold.fold["index"] + 1,
                "target": int(y),
                **{f"prob_{c}": f"{v:.6f}" for c, v in zip(classes, p, strict=True)},
            }
        )
    return rows


def _read_fold(fold_dir: Path) -> dict:
    with open(fold_dir / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {"dir": fold_dir, "rows": rows, "report": json.loads((fold_dir / "report.json").read_text())}
