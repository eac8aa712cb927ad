"""The text of a cross-validation's report: report.md and the summary the command prints."""

from __future__ import annotations

from pathlib import Path

from modules.statistics import BINARY_SCORES, MULTI_SCORES
from tuning.formatting import METRIC_ROWS, fmt_ci, fmt_config, fmt_mean_sd, fmt_metric


def _keys(m: dict) -> tuple[str, ...]:
    return BINARY_SCORES if m.get("positive_class") is not None else MULTI_SCORES


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
        ("intervals", "bootstrap over groups (copies, patients) of the pooled out-of-fold predictions"),
        ("report", f"{run_dir}/report.html (open it in a browser)"),
        ("files", f"{run_dir}/ (report.json, report.md, predictions.csv, split.csv, plots, fold-<n>/)"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(["", *[f"{k:<{width}}  {v}" for k, v in rows]])
