"""The report of a nested cross-validation: pooled out-of-fold metrics with intervals over duplicate groups,
the per-fold values with their mean and standard deviation, the majority baseline, and its files (report.json,
report.md from ``tuning.cv_text``, predictions.csv, plots)."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import numpy as np

from modules.dataset import PreparedData
from modules.files import atomic_write_json, atomic_write_text, csv_text
from modules.statistics import BINARY_SCORES, MULTI_SCORES, N_BOOT, classification_metrics, group_bootstrap
from tuning.backbone import cache_summary
from tuning.cv_text import cv_markdown
from tuning.html_report import write_html_report
from tuning.plots import plot_confusion, plot_roc, plot_roc_ovr
from tuning.provenance import versions
from tuning.settings import SearchSettings

INTERVAL_METHOD = (
    "pooled out-of-fold predictions; 95% percentile bootstrap over groups (copies, patients, volumes) "
    f"({N_BOOT} resamples of whole groups)"
)
PREDICTION_FIELDS = ["path", "label", "group", "fold", "target"]  # then prob_<class> for every class


def prediction_fields(classes) -> list[str]:
    """The columns of a cross-validation's predictions.csv."""
    return [*PREDICTION_FIELDS, *(f"prob_{c}" for c in classes)]


def cv_report(s: SearchSettings, data: PreparedData, folds: list[dict], *, seconds: float, cache) -> dict:
    """The report of a finished cross-validation from its ``folds`` (dicts of ``dir``, prediction ``rows`` and
    search ``report``, in fold order); ``seconds``: the wall time of the whole run."""
    classes = list(data.images.classes)
    keys = _score_keys(data.positive)
    rows = [r for f in folds for r in f["rows"]]
    per_fold = [_fold_row(f, keys) for f in folds]
    # each fold predicts its training portion's majority class: the pooled baseline counts those hits
    correct_majority = sum(round(p["majority_baseline"] * p["n"]) for p in per_fold)
    pooled = _pooled_metrics(
        rows, classes, positive=data.positive, majority_hits=correct_majority, seed=s.seed
    )
    return {
        "kind": "cv",
        "command": s.command,
        "data": data.data_info(),
        "cv": {
            "k": s.cv,
            "ensemble": s.ensemble,
            "fold_seed": data.seed,
            "inner_split": "train/val of the other folds in the ratio of the split fractions, grouped, "
            "seed split_seed + 1 + fold index (0-based; inner_seed of each fold)",
            "folds": per_fold,
        },
        "metrics": {"pooled": pooled, "per_fold": _spread(per_fold, keys)},
        "weights": _weights_block(folds[0]["report"]),
        "search": {**_search_settings(folds[0]["report"]), "cache": _cv_cache_block(cache, folds)},
        "time_s": {
            "total": round(seconds, 1),
            "search": round(sum(p["search_s"] or 0 for p in per_fold), 1),
            "refit": round(sum(p["refit_s"] or 0 for p in per_fold), 1),
        },
        "versions": versions(*s.libraries()),
        "artifacts": {
            "predictions": "predictions.csv",
            "split": "split.csv",
            "plots": ["roc.png", "confusion_matrix.png"],
            "folds": [f["dir"].name for f in folds],
        },
    }


def _weights_block(fold_report: dict) -> dict:
    """Which backbone weights the folds started from, in which layout, and where the weights come from."""
    return {
        "source": fold_report.get("weights"),
        "layout": fold_report.get("weights_layout"),
        "provenance": fold_report.get("weights_provenance"),
    }


def _score_keys(positive) -> tuple[str, ...]:
    """The headline metrics: the two-class ones when there is a positive class, else the macro ones."""
    return BINARY_SCORES if positive is not None else MULTI_SCORES


def _pooled_arrays(rows: list[dict], classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities (n, N) and class indices (n,) of the out-of-fold prediction ``rows``."""
    probs = np.asarray([[float(r[f"prob_{c}"]) for c in classes] for r in rows])
    return probs, np.asarray([int(r["target"]) for r in rows])


def _fold_row(fold: dict, keys: tuple[str, ...]) -> dict:
    """One fold's line of the report: its test metrics, baseline, best config and times."""
    rep = fold["report"]
    test = rep["metrics"]["test"]
    return {
        "fold": int(fold["rows"][0]["fold"]),
        "inner_seed": rep["data"].get("fold", {}).get("inner_seed"),
        "n": test["n"],
        **{k: test[k] for k in keys},
        "majority_baseline": test["majority_baseline"],
        "best_config": rep["best_trial"]["config"],
        "best_value": rep["best_trial"]["best_value"],
        "refit_epochs": rep["config"]["max_epochs"],
        "best_epoch": rep["best_epoch"],
        "search_s": rep["time_s"].get("search"),
        "refit_s": rep["time_s"].get("refit"),
    }


def _pooled_metrics(
    rows: list[dict], classes: list[str], *, positive: int | None, majority_hits: int, seed: int
) -> dict:
    """The metrics of the pooled out-of-fold predictions; their intervals resample whole duplicate groups (the
    image-level intervals stay, under ``<key>_ci95_independent``, for comparison)."""
    probs, y = _pooled_arrays(rows, classes)
    groups = [r["group"] for r in rows]
    pooled = classification_metrics(
        probs, y, classes, positive=positive, majority_baseline=majority_hits / len(y), seed=seed
    )
    intervals = group_bootstrap(probs, y, groups, positive=positive, seed=seed)
    for k in _score_keys(positive):
        if f"{k}_ci95" in pooled:
            pooled[f"{k}_ci95_independent"] = pooled[f"{k}_ci95"]
        pooled[f"{k}_ci95"] = intervals[k]
    pooled["independent_interval_method"] = "as if images were independent: " + pooled["interval_method"]
    pooled["interval_method"] = INTERVAL_METHOD
    return pooled


def _spread(per_fold: list[dict], keys: tuple[str, ...]) -> dict:
    """Mean and standard deviation over the folds of each metric (folds where it is undefined left out)."""
    return {
        k: {"mean": statistics.fmean(v), "sd": statistics.stdev(v) if len(v) > 1 else math.nan}
        for k in keys
        if (v := [p[k] for p in per_fold if p[k] is not None and not math.isnan(p[k])])
    }


def _search_settings(first: dict) -> dict:
    """The search block of the first fold's report without its per-search counts and times (settings only:
    every fold searched alike)."""
    search = dict(first.get("search", {}))
    for key in (
        "trials",
        "failed_trials",
        "wall_time_s",
        "trial_time_s_median",
        "trial_images_per_s_median",
        "trials_per_hour",
        "cache",
    ):
        search.pop(key, None)
    return search


def _cv_cache_block(cache, folds: list[dict]) -> dict:
    block = cache_summary(cache)
    if block.get("enabled"):  # the trials that trained on the cache, over every fold's search
        block["trials_on_cache"] = sum(
            f["report"]["search"].get("cache", {}).get("trials_on_cache", 0) for f in folds
        )
    return block


def write_cv_outputs(report: dict, folds: list[dict], run_dir: Path) -> None:
    classes = list(report["data"]["classes"])
    rows = [r for f in folds for r in f["rows"]]
    atomic_write_text(run_dir / "predictions.csv", csv_text(rows, prediction_fields(classes)))
    probs, y = _pooled_arrays(rows, classes)
    m = report["metrics"]["pooled"]
    plot_confusion(
        m["confusion_matrix"],
        m["confusion_labels"],
        run_dir / "confusion_matrix.png",
        title="pooled out-of-fold predictions",
    )
    title = f"ROC, {report['cv']['k']} folds pooled"
    positive = report["data"].get("positive_class")
    if positive is not None:
        pos = classes.index(positive)
        plot_roc(probs[:, pos], (y == pos).astype(int), run_dir / "roc.png", title=title)
    else:
        plot_roc_ovr(probs, y, classes, run_dir / "roc.png", title=title)
    atomic_write_json(run_dir / "report.json", report)
    atomic_write_text(run_dir / "report.md", cv_markdown(report))
    write_html_report(run_dir)
