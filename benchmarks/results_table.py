"""The README's results table, read from the committed cross-validation reports (never typed by hand).

    python -m benchmarks.results_table results/brain_mri/baseline_cnn results/brain_mri/resnet_stage1 ...

Prints one markdown row per run folder (a ``--cv`` run): pooled accuracy, ROC AUC, sensitivity and specificity
with their 95% intervals, the majority baseline, and the command that produced it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tuning.formatting import fmt_ci


def row(run: Path) -> str:
    report = json.loads((run / "report.json").read_text())
    if report.get("kind") != "cv":
        raise ValueError(f"{run}: not a cross-validated run (report kind {report.get('kind')!r})")
    m = report["metrics"]["pooled"]
    space = report["search"].get("space", "?")
    protocol = f"{report['cv']['k']}-fold nested CV, " + (
        "**LEAKY random folds**" if report["data"].get("leaky") else "grouped folds"
    )
    if report["cv"].get("ensemble", 1) > 1:
        protocol += f", ensemble of {report['cv']['ensemble']}"
    cells = [
        f"`{run.name}`",
        f"`{space}`",
        protocol,
        fmt_ci(m["accuracy"], m["accuracy_ci95"]),
        f"{100 * m['majority_baseline']:.1f}%",
        fmt_ci(m["auroc"], m["auroc_ci95"], pct=False),
        fmt_ci(m["sensitivity"], m["sensitivity_ci95"]),
        fmt_ci(m["specificity"], m["specificity_ci95"]),
        f"[report]({run}/report.md)",
    ]
    return "| " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.results_table",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("runs", nargs="+", type=Path, help="folders of --cv runs")
    args = p.parse_args(argv)
    print(
        "| run | space | protocol | accuracy (95% CI) | majority | ROC AUC (95% CI) | sensitivity | specificity | report |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for run in args.runs:
        print(row(run))
    print()
    for run in args.runs:
        print(f"- `{run}`: `{json.loads((run / 'report.json').read_text())['command']}`")
    return 0


if __name__ == "__main__":
    from tuning.cli import run_main

    sys.exit(run_main(main))
