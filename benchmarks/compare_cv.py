"""Compare two cross-validated runs on the same images: the paired difference, with a group bootstrap.

    python -m benchmarks.compare_cv results/brain_mri/resnet_stage1 results/brain_mri/levers/stage1-crop
    python -m benchmarks.compare_cv --markdown REFERENCE RUN [RUN ...]   # a table, one row per run
    python -m benchmarks.compare_cv results/brain_mri/external_sartaj results/brain_mri/external_sartaj2

Both runs must have scored the same images: the ``predictions.csv`` of two ``--cv`` runs, or of two
``tuning.evaluate`` runs (two models scored on one other collection). The difference B - A of
each headline metric is computed on the same resamples of whole duplicate groups (2000, seeded): what it
resamples is the images (by group) of one pair of runs, so its interval says how much of the difference the
luck of which images were drawn could explain. It does not resample the runs: the run-to-run spread of a
search (other folds, other sampled configs, ASHA's order) comes only from repeating the runs (``--repeats`` or
other split seeds), and a difference smaller than that spread is not shown to be a gain by this interval.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

import numpy as np

from modules.statistics import BINARY_SCORES, MULTI_SCORES, scores
from tuning.formatting import fmt_ci

KINDS = ("cv", "evaluate")


def _load(run: Path) -> tuple[dict, dict[str, dict]]:
    report = json.loads((run / "report.json").read_text())
    if report.get("kind") not in KINDS:
        raise ValueError(
            f"{run}: report kind {report.get('kind')!r}; expected a cross-validated run (--cv) or a "
            "tuning.evaluate run"
        )
    with open(run / "predictions.csv", newline="") as fh:
        rows = {r["path"]: r for r in csv.DictReader(fh)}
    if rows and "group" not in next(iter(rows.values())):
        raise ValueError(
            f"{run}/predictions.csv has no group column (written before evaluate recorded groups); score the "
            "model again with tuning.evaluate"
        )
    if report["kind"] == "evaluate":
        # an evaluation's headline block is "test" where a cross-validation's is "pooled"
        report = {**report, "metrics": {**report["metrics"], "pooled": report["metrics"]["test"]}}
        report["data"] = {**report["data"], "classes": report["model"]["classes"]}
        report["data"].setdefault("positive_class", report["model"].get("positive_class"))
    return report, rows


def _positive(report: dict, rows: dict[str, dict], classes: list[str]) -> int | None:
    name = report["data"].get("positive_class")
    if name:
        return classes.index(name)
    if len(classes) == 2 and "prob" in next(iter(rows.values())):
        return 1  # a two-class run written before classes came from the data: the last class was positive
    return None


def _probs(row: dict, classes: list[str]) -> list[float]:
    """Class probabilities of a predictions.csv row; rows of two-class runs written before N classes hold
    only the positive (last) class's probability, ``prob``."""
    if "prob" in row and f"prob_{classes[0]}" not in row:
        p = float(row["prob"])
        return [1.0 - p, p]
    return [float(row[f"prob_{c}"]) for c in classes]


def compare(a: Path, b: Path, *, n_boot: int = 2000, seed: int = 0) -> dict:
    rep_a, rows_a = _load(a)
    rep_b, rows_b = _load(b)
    if rep_a["kind"] != rep_b["kind"]:
        raise ValueError(
            f"{a} is a {rep_a['kind']} run and {b} a {rep_b['kind']} run; compare like with like"
        )
    if set(rows_a) != set(rows_b):
        raise ValueError(f"{a} and {b} scored different images ({len(rows_a)} vs {len(rows_b)})")
    if rep_a["data"]["fingerprint"] != rep_b["data"]["fingerprint"]:
        raise ValueError(f"{a} and {b} come from different data (fingerprints differ)")
    classes = list(rep_a["data"]["classes"])
    positive = _positive(rep_a, rows_a, classes)
    keys = BINARY_SCORES if positive is not None else MULTI_SCORES
    paths = sorted(rows_a)
    y = np.asarray([int(rows_a[p]["target"]) for p in paths])
    pa, pb = (np.asarray([_probs(rows[p], classes) for p in paths]) for rows in (rows_a, rows_b))
    members: dict[str, list[int]] = {}
    for i, p in enumerate(paths):
        members.setdefault(rows_a[p]["group"], []).append(i)
    blocks = [np.asarray(v) for _, v in sorted(members.items())]
    rng = np.random.default_rng(seed)
    diffs: dict[str, list[float]] = {k: [] for k in keys}
    for _ in range(n_boot):
        idx = np.concatenate([blocks[j] for j in rng.integers(0, len(blocks), len(blocks))])
        sa, sb = scores(pa[idx], y[idx], positive), scores(pb[idx], y[idx], positive)
        for k in keys:
            if not (math.isnan(sa[k]) or math.isnan(sb[k])):
                diffs[k].append(sb[k] - sa[k])
    point_a, point_b = scores(pa, y, positive), scores(pb, y, positive)
    return {
        "a": str(a),
        "b": str(b),
        "n": len(paths),
        "groups": len(blocks),
        "metrics": {
            k: {
                "a": point_a[k],
                "b": point_b[k],
                "difference": point_b[k] - point_a[k],
                "difference_ci95": [
                    float(np.percentile(diffs[k], 2.5)),
                    float(np.percentile(diffs[k], 97.5)),
                ],
            }
            for k in keys
        },
    }


def table(reference: Path, runs: list[Path]) -> str:
    """Markdown: each run's pooled accuracy and AUC with intervals, its paired difference from ``reference``
    with the group-bootstrap interval, and its command."""
    lines = [
        "| run | accuracy (95% CI) | ROC AUC (95% CI) | accuracy - ref. (95% CI) | AUC - ref. (95% CI) | command |",
        "|---|---|---|---|---|---|",
    ]
    for run in [reference, *runs]:
        m, _ = _load(run)
        pooled = m["metrics"]["pooled"]
        auc_key = "auroc" if pooled.get("auroc") is not None else "auroc_macro"
        if run == reference:
            diff_acc = diff_auc = "(reference)"
        else:
            d = compare(reference, run)["metrics"]
            diff_acc = _diff(d["accuracy"], pct=True)
            diff_auc = _diff(d[auc_key], pct=False)
        lines.append(
            f"| `{run.name}` | {fmt_ci(pooled['accuracy'], pooled['accuracy_ci95'])} | "
            f"{fmt_ci(pooled[auc_key], pooled[f'{auc_key}_ci95'], pct=False)} | {diff_acc} | {diff_auc} | "
            f"`{m['command']}` |"
        )
    return "\n".join(lines)


def _diff(m: dict, *, pct: bool) -> str:
    lo, hi = m["difference_ci95"]
    if pct:
        return f"{100 * m['difference']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"
    return f"{m['difference']:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.compare_cv",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("a", type=Path, help="the reference run folder (a --cv run)")
    p.add_argument("b", type=Path, nargs="+", help="the changed run folder(s) (--cv runs on the same data)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--markdown", action="store_true", help="one markdown row per run, with its command")
    args = p.parse_args(argv)
    if args.markdown:
        print(table(args.a, args.b))
        return 0
    if len(args.b) != 1:
        raise ValueError(f"compare one run with the reference, or use --markdown for {len(args.b)} runs")
    result = compare(args.a, args.b[0])
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"A = {result['a']}\nB = {result['b']}\n{result['n']} images in {result['groups']} duplicate groups\n"
    )
    print(f"{'metric':<14}{'A':>9}{'B':>9}{'B - A':>9}   95% CI of B - A (group bootstrap, paired)")
    for k, m in result["metrics"].items():
        lo, hi = m["difference_ci95"]
        print(f"{k:<14}{m['a']:>9.3f}{m['b']:>9.3f}{m['difference']:>+9.3f}   [{lo:+.3f}, {hi:+.3f}]")
    return 0


if __name__ == "__main__":
    from tuning.cli import run_main

    sys.exit(run_main(main))
