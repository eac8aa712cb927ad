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
import io
import math
import os
import statistics
import time
from pathlib import Path

import numpy as np
from ray import tune

from modules.dataset import PreparedData
from modules.sources import display_path
from tuning.files import atomic_write_json, atomic_write_text
from tuning.report import (
    classification_metrics,
    fmt_ci,
    plot_confusion,
    plot_roc,
    plot_roc_ovr,
    rank_auc,
    versions,
)
from tuning.search import SearchSettings

N_BOOT = 2000
BINARY_SCORES = ("accuracy", "auroc", "sensitivity", "specificity")
MULTI_SCORES = ("accuracy", "auroc_macro", "recall_macro")
INTERVAL_METHOD = (
    "pooled out-of-fold predictions; 95% percentile bootstrap over duplicate groups "
    f"({N_BOOT} resamples of whole groups)"
)
PREDICTION_FIELDS = ["path", "label", "group", "fold", "target"]  # then prob_<class> for every class


def _fields(classes) -> list[str]:
    return [*PREDICTION_FIELDS, *(f"prob_{c}" for c in classes)]


def run_cv(s: SearchSettings, data: PreparedData, spec: dict, weights, *, resume: bool) -> dict | None:
    from tuning.search_run import EXPERIMENT, _storage, build_cache, search_split, share_cache

    run_dir = Path(s.run_dir)
    started = time.perf_counter()
    folds = data.cv_folds(s.cv)
    fold_of = [
        next(f for f, fd in enumerate(folds) if fd.splits[i] == "test") for i in range(len(data.splits))
    ]
    atomic_write_text(run_dir / "split.csv", folds_csv(data, fold_of))
    sizes = [fold_of.count(f) for f in range(s.cv)]
    print(
        f"data: {data.images.source}{' (SYNTHETIC phantom set)' if data.synthetic else ''}: "
        f"{len(data.images.records)} images {data.images.class_counts()}; {s.cv}-fold nested cross-validation, "
        f"{'LEAKY random' if data.leaky else 'grouped'} folds of {sizes} images"
    )
    cache = build_cache(s, spec, data, weights, every_image=True)
    shared = False  # into Ray's object store before the first fold that still needs a search
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
        fs = dataclasses.replace(
            s,
            run_dir=str(fold_dir),
            storage=f"{s.storage.rstrip('/')}/fold-{f + 1}" if s.storage else None,
            cv=0,
        )
        fold_resume = resume and tune.Tuner.can_restore(os.path.join(_storage(fs), EXPERIMENT))
        counts = {k: fold.splits.count(k) for k in ("train", "val", "test")}
        print(
            f"\n=== fold {f + 1} of {s.cv}: search on train {counts['train']} / val {counts['val']}, "
            f"test {counts['test']} held out"
        )
        if not shared:
            cache, shared = share_cache(s, cache), True
        outputs: dict = {}
        report = search_split(
            fs, fold, spec, weights, cache, resume=fold_resume, resume_dir=s.run_dir, test_outputs=outputs
        )
        if report is None:
            return None
        rows = _prediction_rows(fold, outputs)
        atomic_write_text(predictions, _csv(rows, _fields(data.images.classes)))
        done.append(_read_fold(fold_dir))
    report = cv_report(s, data, done, seconds=time.perf_counter() - started, cache=cache)
    write_cv_outputs(report, done, run_dir)
    print(cv_summary(report, run_dir))
    return report


def folds_csv(data: PreparedData, fold_of: list[int]) -> str:
    rows = [
        {"path": display_path(r.path), "sha256": r.sha256, "label": r.label, "group": g, "fold": str(f + 1)}
        for r, g, f in zip(data.images.records, data.groups, fold_of, strict=True)
    ]
    return _csv(sorted(rows, key=lambda row: row["path"]), ["path", "sha256", "label", "group", "fold"])


def _csv(rows: list[dict], fields: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


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
    import json

    with open(fold_dir / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {"dir": fold_dir, "rows": rows, "report": json.loads((fold_dir / "report.json").read_text())}


# ----------------------------------------------------------------------------- metrics
def scores(
    probs: np.ndarray, y: np.ndarray, positive: int | None, threshold: float = 0.5
) -> dict[str, float]:
    """The headline metrics of class probabilities ``probs`` (n, N) against class indices ``y`` (nan where
    undefined). Two classes (``positive`` given): accuracy, ROC AUC, sensitivity, specificity. More classes:
    accuracy, macro one-vs-rest ROC AUC, macro recall."""
    if positive is not None:
        p = probs[:, positive]
        pred = p >= threshold
        pos = y == positive
        neg = ~pos
        return {
            "accuracy": float((pred == pos).mean()) if len(y) else math.nan,
            "auroc": rank_auc(pos.astype(int), p) if pos.any() and neg.any() else math.nan,
            "sensitivity": float(pred[pos].mean()) if pos.any() else math.nan,
            "specificity": float((~pred[neg]).mean()) if neg.any() else math.nan,
        }
    pred = probs.argmax(axis=1)
    present = [c for c in range(probs.shape[1]) if (y == c).any()]
    aucs = [rank_auc((y == c).astype(int), probs[:, c]) for c in present if (y != c).any()]
    return {
        "accuracy": float((pred == y).mean()) if len(y) else math.nan,
        "auroc_macro": float(np.mean(aucs)) if aucs else math.nan,
        "recall_macro": float(np.mean([(pred[y == c] == c).mean() for c in present]))
        if present
        else math.nan,
    }


def group_bootstrap(
    probs: np.ndarray,
    y: np.ndarray,
    groups: list[str],
    *,
    positive: int | None = 1,
    seed: int = 0,
    n_boot: int = N_BOOT,
) -> dict[str, list[float]]:
    """95% percentile intervals of ``scores`` from resampling whole duplicate groups with replacement.
    ``probs``: (n, N) class probabilities, or (n,) positive-class probabilities of a two-class problem."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim == 1:
        probs = np.stack([1 - probs, probs], axis=1)
    y = np.asarray(y)
    members: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    blocks = [np.asarray(v) for _, v in sorted(members.items())]
    rng = np.random.default_rng(seed)
    values: dict[str, list[float]] = {}
    for _ in range(n_boot):
        idx = np.concatenate([blocks[j] for j in rng.integers(0, len(blocks), len(blocks))])
        for k, v in scores(probs[idx], y[idx], positive).items():
            values.setdefault(k, [])
            if not math.isnan(v):
                values[k].append(v)
    return {
        k: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] if v else [math.nan, math.nan]
        for k, v in values.items()
    }


def cv_report(s: SearchSettings, data: PreparedData, folds: list[dict], *, seconds: float, cache) -> dict:
    classes = list(data.images.classes)
    positive = data.positive
    keys = BINARY_SCORES if positive is not None else MULTI_SCORES
    rows = [r for f in folds for r in f["rows"]]
    probs = np.asarray([[float(r[f"prob_{c}"]) for c in classes] for r in rows])
    y = np.asarray([int(r["target"]) for r in rows])
    groups = [r["group"] for r in rows]
    correct_majority = 0
    per_fold = []
    for f in folds:
        rep = f["report"]
        test = rep["metrics"]["test"]
        correct_majority += round(test["majority_baseline"] * test["n"])
        per_fold.append(
            {
                "fold": int(f["rows"][0]["fold"]),
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
        )
    baseline = correct_majority / len(y)
    pooled = classification_metrics(
        probs, y, classes, positive=positive, majority_baseline=baseline, seed=s.seed
    )
    intervals = group_bootstrap(probs, y, groups, positive=positive, seed=s.seed)
    for k in keys:  # the image-level intervals stay, under another name, for comparison
        if f"{k}_ci95" in pooled:
            pooled[f"{k}_ci95_independent"] = pooled[f"{k}_ci95"]
        pooled[f"{k}_ci95"] = intervals[k]
    pooled["independent_interval_method"] = "as if images were independent: " + pooled["interval_method"]
    pooled["interval_method"] = INTERVAL_METHOD
    spread = {
        k: {
            "mean": statistics.fmean(v),
            "sd": statistics.stdev(v) if len(v) > 1 else math.nan,
        }
        for k in keys
        if (v := [p[k] for p in per_fold if p[k] is not None and not math.isnan(p[k])])
    }
    first = folds[0]["report"]
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
        "metrics": {"pooled": pooled, "per_fold": spread},
        "search": {**search, "cache": _cv_cache_block(s, cache, folds)},
        "time_s": {
            "total": round(seconds, 1),
            "search": round(sum(p["search_s"] or 0 for p in per_fold), 1),
            "refit": round(sum(p["refit_s"] or 0 for p in per_fold), 1),
        },
        "versions": versions(),
        "artifacts": {
            "predictions": "predictions.csv",
            "split": "split.csv",
            "plots": ["roc.png", "confusion_matrix.png"],
            "folds": [f["dir"].name for f in folds],
        },
    }


def _cv_cache_block(s: SearchSettings, cache, folds: list[dict]) -> dict:
    from tuning.search_run import _cache_block

    block = _cache_block(s, cache, [])
    if block.get("enabled"):  # the trials that trained on the cache, over every fold's search
        block["trials_on_cache"] = sum(
            f["report"]["search"].get("cache", {}).get("trials_on_cache", 0) for f in folds
        )
    return block


def write_cv_outputs(report: dict, folds: list[dict], run_dir: Path) -> None:
    classes = list(report["data"]["classes"])
    rows = [r for f in folds for r in f["rows"]]
    atomic_write_text(run_dir / "predictions.csv", _csv(rows, _fields(classes)))
    probs = np.asarray([[float(r[f"prob_{c}"]) for c in classes] for r in rows])
    y = np.asarray([int(r["target"]) for r in rows])
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


def _fmt_config(cfg: dict) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(cfg.items()))


def _pct(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}%"


def _mean_sd(spread: dict, k: str, pct: bool = True) -> str:
    if k not in spread:
        return "n/a"
    mean, sd = spread[k]["mean"], spread[k]["sd"]
    return f"{100 * mean:.1f} ± {100 * sd:.1f}" if pct else f"{mean:.3f} ± {sd:.3f}"


METRIC_ROWS = {  # key -> (label, as a percentage)
    "accuracy": ("accuracy", True),
    "auroc": ("ROC AUC", False),
    "sensitivity": ("sensitivity", True),
    "specificity": ("specificity", True),
    "auroc_macro": ("ROC AUC (macro, one-vs-rest)", False),
    "recall_macro": ("recall (macro)", True),
}


def _keys(m: dict) -> tuple[str, ...]:
    return BINARY_SCORES if m.get("positive_class") is not None else MULTI_SCORES


def _value(m: dict, k: str) -> str:
    return fmt_ci(m[k], m[f"{k}_ci95"], pct=METRIC_ROWS[k][1])


def _cell(v, pct: bool) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{100 * v:.1f}%" if pct else f"{v:.3f}"


def cv_markdown(report: dict) -> str:
    m = report["metrics"]["pooled"]
    spread = report["metrics"]["per_fold"]
    d = report["data"]
    cv = report["cv"]
    s = report["search"]
    leaky = d.get("leaky")
    keys = _keys(m)
    positive = f"; positive class `{d['positive_class']}`" if d.get("positive_class") else ""
    lines = [
        f"# Cross-validated search report: {s.get('space', '?')}",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Data: `{d['source']}`{' **(synthetic phantom set, not real scans)**' if d['synthetic'] else ''}; "
        f"{d['files']} images {d['classes']}; fingerprint `{d['fingerprint'][:16]}`{positive}.",
        "",
    ]
    if leaky:
        lines += [
            "> **LEAKY: `--split random`.** Folds were cut file by file, so duplicates of one scan sit in "
            "training and test folds. These numbers are inflated; they exist to show by how much.",
            "",
        ]
    folds_by = "by file (leaky)" if leaky else "grouped by duplicate cluster"
    lines += [
        f"Protocol: {cv['k']}-fold nested cross-validation, folds {folds_by}, stratified, seed {cv['fold_seed']}. "
        f"For each fold a search ({s.get('num_samples')} samples, ASHA over at most "
        f"{s.get('scheduler', {}).get('max_t')} epochs on {s.get('metric')}) ran on the other folds (split into "
        "train/val), its best config was refit there and predicted the held-out fold once"
        + (
            f" (as the mean class probabilities of its {cv['ensemble']} best configs, each refit)."
            if cv.get("ensemble", 1) > 1
            else "."
        ),
        "",
        "| metric | pooled out-of-fold (95% CI) | per-fold mean ± sd |",
        "|---|---|---|",
    ]
    for k in keys:
        label, pct = METRIC_ROWS[k]
        n = f" (n={m['n']})" if k == "accuracy" else ""
        lines.append(f"| {label} | {_value(m, k)}{n} | {_mean_sd(spread, k, pct)} |")
        if k == "accuracy":
            lines.append(f"| majority baseline | {_pct(m['majority_baseline'])} | |")
    order = ", ".join(m.get("confusion_labels", d["classes"]))
    lines += [
        "",
        f"Intervals: {m['interval_method']}. Confusion matrix (rows true, columns predicted; {order}): "
        f"{m['confusion_matrix']}.",
        "",
        "| fold | n | "
        + " | ".join(METRIC_ROWS[k][0] for k in keys)
        + " | majority | refit epochs | best config |",
        "|---|---|" + "---|" * len(keys) + "---|---|---|",
    ]
    for p in cv["folds"]:
        cells = " | ".join(_cell(p[k], METRIC_ROWS[k][1]) for k in keys)
        lines.append(
            f"| {p['fold']} | {p['n']} | {cells} | {_pct(p['majority_baseline'])} | {p['refit_epochs']} | "
            f"{_fmt_config(p['best_config'])} |"
        )
    t = report["time_s"]
    lines += [
        "",
        f"Time: {t['total']:.0f} s in all (searches {t['search']:.0f} s, refits {t['refit']:.0f} s). Each fold's "
        "search report, trials and plots are in its `fold-<n>/` folder.",
        "",
        "Plots: ![roc.png](roc.png) ![confusion_matrix.png](confusion_matrix.png)",
        "",
    ]
    return "\n".join(lines)


def cv_summary(report: dict, run_dir: Path) -> str:
    m = report["metrics"]["pooled"]
    spread = report["metrics"]["per_fold"]
    protocol = "LEAKY random folds" if report["data"].get("leaky") else "grouped folds"
    rows = [
        ("data", report["data"]["source"] + (" (SYNTHETIC)" if report["data"]["synthetic"] else "")),
        ("protocol", f"{report['cv']['k']}-fold nested CV, {protocol}"),
    ]
    for k in _keys(m):
        label, pct = METRIC_ROWS[k]
        extra = f"  n={m['n']}, per fold {_mean_sd(spread, k, pct)}" if k == "accuracy" else ""
        rows.append((f"{label} (95% CI)", _value(m, k) + extra))
        if k == "accuracy":
            rows.append(("majority baseline", _pct(m["majority_baseline"])))
    rows += [
        ("intervals", "bootstrap over duplicate groups of the pooled out-of-fold predictions"),
        ("files", f"{run_dir}/ (report.json, report.md, predictions.csv, split.csv, plots, fold-<n>/)"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(["", *[f"{k:<{width}}  {v}" for k, v in rows]])
