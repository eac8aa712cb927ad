"""Text shared by the commands and reports: metrics with their intervals, a config on one line, the data
report of ``tuning.data``."""

from __future__ import annotations

import math
from collections.abc import Sequence

from modules.dataset import PreparedData
from modules.split import SPLITS


def fmt_ci(value: float, ci: Sequence[float], *, pct: bool = True) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if pct:
        return f"{100 * value:.1f}% [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def is_binary(m: dict) -> bool:
    """Whether a metrics dict holds two-class results (sensitivity and the rest), not N-class ones."""
    return m.get("sensitivity") is not None


def pct(value) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.1f}%"


def metric_rows(m: dict) -> list[tuple[str, str]]:
    """(name, formatted value) of the metrics that apply, after accuracy and the majority baseline: ROC AUC,
    sensitivity and specificity for two classes; macro AUC, recall, precision and per-class recall for N."""
    if is_binary(m):
        return [
            ("ROC AUC", fmt_ci(m["auroc"], m["auroc_ci95"], pct=False)),
            ("sensitivity", fmt_ci(m["sensitivity"], m["sensitivity_ci95"])),
            ("specificity", fmt_ci(m["specificity"], m["specificity_ci95"])),
        ]
    rows = [
        ("macro ROC AUC", fmt_ci(m["auroc_macro"], m["auroc_macro_ci95"], pct=False) + " (one-vs-rest)"),
        ("macro recall", pct(m["recall_macro"])),
        ("macro precision", pct(m["precision_macro"])),
    ]
    for name, c in m["per_class"].items():
        recall = fmt_ci(c["recall"], c["recall_ci95"]) if c["n"] else "none in the labels"
        precision = "never predicted" if math.isnan(c["precision"]) else f"precision {pct(c['precision'])}"
        rows.append((f"recall {name}", f"{recall}, {precision}  (n={c['n']})"))
    return rows


def metrics_markdown(m: dict) -> list[str]:
    """The Markdown table of a test result: accuracy (n), the majority baseline, then ``metric_rows``."""
    return [
        "| metric | value (95% CI) |",
        "|---|---|",
        f"| accuracy | {fmt_ci(m['accuracy'], m['accuracy_ci95'])} (n={m['n']}) |",
        f"| majority baseline | {100 * m['majority_baseline']:.1f}% |",
        *[f"| {name} | {value} |" for name, value in metric_rows(m)],
    ]


def summary_lines(m: dict) -> list[str]:
    """A short human summary of a ``binary_metrics`` or ``classification_metrics`` dict."""
    return [
        f"test accuracy     {fmt_ci(m['accuracy'], m['accuracy_ci95'])}   (n={m['n']})",
        f"majority baseline {100 * m['majority_baseline']:.1f}%",
        *[f"{name:<17} {value}" for name, value in metric_rows(m)],
    ]


METRIC_ROWS = {  # key -> (label, as a percentage)
    "accuracy": ("accuracy", True),
    "auroc": ("ROC AUC", False),
    "sensitivity": ("sensitivity", True),
    "specificity": ("specificity", True),
    "auroc_macro": ("ROC AUC (macro, one-vs-rest)", False),
    "recall_macro": ("recall (macro)", True),
}


def fmt_metric(v, *, pct: bool) -> str:
    """A value as a percentage with one decimal, or to 3 decimals; "n/a" when None or nan."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{100 * v:.1f}%" if pct else f"{v:.3f}"


def fmt_mean_sd(spread: dict, k: str, pct: bool = True) -> str:
    """``spread[k]``'s "mean ± sd" (in percent points when ``pct``); "n/a" when ``k`` has none."""
    if k not in spread:
        return "n/a"
    mean, sd = spread[k]["mean"], spread[k]["sd"]
    return f"{100 * mean:.1f} ± {100 * sd:.1f}" if pct else f"{mean:.3f} ± {sd:.3f}"


def fmt_config(cfg: dict) -> str:
    """A config on one line, keys sorted, floats to 3 significant digits."""
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(cfg.items()))


def data_report(data: PreparedData) -> str:
    """What ``python -m tuning.data`` prints: counts, formats, skipped files, duplicates, the split."""
    s = data.summary()
    lines = [
        f"data: {s['source']}" + ("  (SYNTHETIC phantom set, not real scans)" if s["synthetic"] else ""),
        f"fingerprint: {s['fingerprint']}",
        f"images: {s['files']}  "
        + "  ".join(f"{c}: {n}" for c, n in s["classes"].items())
        + (f"  (from {s['source_files']} files)" if s["source_files"] != s["files"] else ""),
        f"classes: {len(s['classes'])}; "
        + (
            f"positive class: {s['positive_class']}"
            if s["positive_class"] is not None
            else "scored one-vs-rest (no positive class)"
        ),
        "formats: " + ", ".join(f"{k} {v}" for k, v in s["formats"].items()),
        "modes: " + ", ".join(f"{k} {v}" for k, v in s["modes"].items()),
        *_clinical_lines(s),
        f"skipped: {len(s['skipped'])}",
        *[f"  {item['path']}: {item['reason']}" for item in s["skipped"]],
        f"exact duplicate groups: {s['exact_duplicate_groups']} ({s['exact_duplicate_files']} files)",
        f"duplicate clusters (exact + near): {s['duplicate_clusters']} ({s['duplicate_cluster_files']} files)",
        *_subject_lines(s["subjects"]),
        f"groups: {s['groups']}; groups across splits: {s['groups_across_splits']}",
        f"split (seed {s['split_seed']}, fractions {s['split_fractions']}):",
    ]
    classes = list(s["classes"])
    lines.append(f"  {'split':<6}" + "".join(f"{c:>8}" for c in classes) + f"{'total':>8}  majority baseline")
    for name in SPLITS:
        counts = s["split"][name]
        base = s["majority_baseline"][name]
        lines.append(
            f"  {name:<6}" + "".join(f"{counts[c]:>8}" for c in classes) + f"{sum(counts.values()):>8}"
            f"  {base['accuracy']:.3f} (always '{base['class']}')"
        )
    return "\n".join(lines)


def _clinical_lines(s: dict) -> list[str]:
    """How DICOM and NIfTI grey levels were made, and the slices taken (only for sets that hold them)."""
    if set(s["intensity"]) <= {"as stored"}:
        return []
    lines = ["grey levels: " + ", ".join(f"{k} {v}" for k, v in s["intensity"].items())]
    if any(f.startswith("NIfTI") for f in s["formats"]):
        lines.append(f"NIfTI slices: {s['slices']['slices']} along the {s['slices']['axis']} axis")
    if s["blank_images_left_out"]:
        lines.append(f"blank frames or slices left out: {s['blank_images_left_out']}")
    return lines


def _subject_lines(sub: dict) -> list[str]:
    """Patients and volumes: how many, how they are split, and that none straddles two splits."""
    if not sub["subjects"]:
        return ["subjects: none named (no DICOM patient, NIfTI volume or --groups); grouped by copies only"]
    kinds = ", ".join(f"{k} {n}" for k, n in sub["kinds"].items())
    split = ", ".join(f"{name} {n}" for name, n in sub["split"].items())
    lines = [
        f"subjects: {sub['subjects']} ({kinds}) holding {sub['images_with_subject']} images; "
        f"{sub['images_without_subject']} images without one",
        f"subjects per split: {split}; subjects across splits: {sub['across_splits']}",
    ]
    if sub["groups_with_several_subjects"]:
        lines.append(
            f"groups joining several subjects (copies of an image under two patients?): "
            f"{sub['groups_with_several_subjects']}"
        )
    return lines
