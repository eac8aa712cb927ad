"""The report of a nested cross-validation: pooled out-of-fold metrics with intervals over duplicate groups,
the per-fold values with their mean and standard deviation, the majority baseline, report.md and plots."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import numpy as np

from modules.dataset import PreparedData
from modules.files import atomic_write_json, atomic_write_text, csv_text
from modules.statistics import BINARY_SCORES, MULTI_SCORES, N_BOOT, classification_metrics, group_bootstrap
from tuning.backbone import cache_summary
from tuning.formatting import fmt_ci, fmt_config
from tuning.plots import plot_confusion, plot_roc, plot_roc_ovr
from tuning.provenance import versions
from tuning.settings import SearchSettings

INTERVAL_METHOD = (
    "pooled out-of-fold predictions; 95% percentile bootstrap over duplicate groups "
    f"({N_BOOT} resamples of whole groups)"
)
PREDICTION_FIELDS = ["path", "label", "group", "fold", "target"]  # then prob_<class> for every class


def prediction_fields(classes) -> list[str]:
    """The columns of a cross-validation's predictions.csv."""
    return [*PREDICTION_FIELDS, *(f"prob_{c}" for c in classes)]


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
        "search": {**search, "cache": _cv_cache_block(cache, folds)},
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
            f"{fmt_config(p['best_config'])} |"
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
