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
from tuning.formatting import METRIC_ROWS, fmt_ci, fmt_config, fmt_mean_sd, fmt_metric
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
        "search": {**_search_settings(folds[0]["report"]), "cache": _cv_cache_block(cache, folds)},
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


def _keys(m: dict) -> tuple[str, ...]:
    return _score_keys(m.get("positive_class"))


def _value(m: dict, k: str) -> str:
    return fmt_ci(m[k], m[f"{k}_ci95"], pct=METRIC_ROWS[k][1])


def cv_markdown(report: dict) -> str:
    """report.md of a cross-validation: data and protocol, the pooled and per-fold metrics, one row per fold."""
    m = report["metrics"]["pooled"]
    d = report["data"]
    keys = _keys(m)
    order = ", ".join(m.get("confusion_labels", d["classes"]))
    t = report["time_s"]
    lines = [
        *_md_header(report),
        *_md_metric_table(m, report["metrics"]["per_fold"], keys),
        "",
        f"Intervals: {m['interval_method']}. Confusion matrix (rows true, columns predicted; {order}): "
        f"{m['confusion_matrix']}.",
        "",
        *_md_fold_table(report["cv"]["folds"], keys),
        "",
        f"Time: {t['total']:.0f} s in all (searches {t['search']:.0f} s, refits {t['refit']:.0f} s). Each fold's "
        "search report, trials and plots are in its `fold-<n>/` folder.",
        "",
        "Plots: ![roc.png](roc.png) ![confusion_matrix.png](confusion_matrix.png)",
        "",
    ]
    return "\n".join(lines)


def _md_header(report: dict) -> list[str]:
    """The title, the command, the data (flagged when synthetic or leaky) and the protocol of report.md."""
    d, cv, s = report["data"], report["cv"], report["search"]
    leaky = d.get("leaky")
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
    ]
    return lines


def _md_metric_table(m: dict, spread: dict, keys: tuple[str, ...]) -> list[str]:
    """The pooled value (95% CI) and per-fold mean ± sd of every headline metric, the baseline under accuracy."""
    lines = ["| metric | pooled out-of-fold (95% CI) | per-fold mean ± sd |", "|---|---|---|"]
    for k in keys:
        label, pct = METRIC_ROWS[k]
        n = f" (n={m['n']})" if k == "accuracy" else ""
        lines.append(f"| {label} | {_value(m, k)}{n} | {fmt_mean_sd(spread, k, pct)} |")
        if k == "accuracy":
            lines.append(f"| majority baseline | {fmt_metric(m['majority_baseline'], pct=True)} | |")
    return lines


def _md_fold_table(folds: list[dict], keys: tuple[str, ...]) -> list[str]:
    """One row per fold: its size, headline metrics, majority baseline, refit epochs and best config."""
    heads = " | ".join(METRIC_ROWS[k][0] for k in keys)
    lines = [
        f"| fold | n | {heads} | majority | refit epochs | best config |",
        "|---|---|" + "---|" * len(keys) + "---|---|---|",
    ]
    for p in folds:
        cells = " | ".join(fmt_metric(p[k], pct=METRIC_ROWS[k][1]) for k in keys)
        majority = fmt_metric(p["majority_baseline"], pct=True)
        lines.append(
            f"| {p['fold']} | {p['n']} | {cells} | {majority} | {p['refit_epochs']} | {fmt_config(p['best_config'])} |"
        )
    return lines


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
        extra = f"  n={m['n']}, per fold {fmt_mean_sd(spread, k, pct)}" if k == "accuracy" else ""
        rows.append((f"{label} (95% CI)", _value(m, k) + extra))
        if k == "accuracy":
            rows.append(("majority baseline", fmt_metric(m["majority_baseline"], pct=True)))
    rows += [
        ("intervals", "bootstrap over duplicate groups of the pooled out-of-fold predictions"),
        ("files", f"{run_dir}/ (report.json, report.md, predictions.csv, split.csv, plots, fold-<n>/)"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(["", *[f"{k:<{width}}  {v}" for k, v in rows]])
