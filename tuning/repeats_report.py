"""The report of a repeated nested cross-validation (``--cv K --repeats R``): each repeat's pooled result with its
95% interval (a bootstrap over duplicate groups, within that repeat), and the mean and SD across repeats (the
run-to-run spread: new folds, new inner splits, new searches)."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from modules.files import atomic_write_json, atomic_write_text
from modules.statistics import BINARY_SCORES, MULTI_SCORES
from tuning.formatting import METRIC_ROWS, fmt_ci, fmt_mean_sd, fmt_metric
from tuning.html_report import write_html_report
from tuning.provenance import versions
from tuning.settings import SearchSettings


def across(reports: list[dict], keys) -> dict:
    """{metric: {"mean", "sd", "values"}} of the repeats' pooled values (sd nan for a single repeat)."""
    out = {}
    for k in keys:
        values = [r["metrics"]["pooled"][k] for r in reports]
        values = [v for v in values if v is not None and not math.isnan(v)]
        if values:
            sd = statistics.stdev(values) if len(values) > 1 else math.nan
            out[k] = {"mean": statistics.fmean(values), "sd": sd, "values": values}
    return out


def repeats_report(s: SearchSettings, reports: list[dict]) -> dict:
    first = reports[0]
    keys = BINARY_SCORES if first["metrics"]["pooled"].get("positive_class") is not None else MULTI_SCORES
    return {
        "kind": "cv-repeats",
        "command": s.command,
        "data": {**first["data"], "split_seed": None, "split_seeds": s.split_seeds},
        "cv": {"k": s.cv, "ensemble": s.ensemble, "repeats": s.repeats, "split_seeds": s.split_seeds},
        "repeats": [
            {
                "split_seed": seed,
                "run": f"repeat-{seed}",
                "data": {"split_seed": r["data"]["split_seed"]},
                "metrics": {"pooled": r["metrics"]["pooled"]},
            }
            for seed, r in zip(s.split_seeds, reports, strict=True)
        ],
        "metrics": {
            "across_repeats": across(reports, [*keys, "majority_baseline"]),
            "spread": "mean and SD over the repeats' pooled values (each repeat: new folds, inner splits, searches)",
        },
        "search": first.get("search", {}),
        "time_s": {"total": round(sum(r["time_s"]["total"] for r in reports), 1)},
        "versions": versions(*s.libraries()),
        "artifacts": {"repeats": [f"repeat-{seed}" for seed in s.split_seeds]},
    }


def repeats_markdown(report: dict) -> str:
    first = report["repeats"][0]["metrics"]["pooled"]
    keys = BINARY_SCORES if first.get("positive_class") is not None else MULTI_SCORES
    spread = report["metrics"]["across_repeats"]
    d, cv = report["data"], report["cv"]
    lines = [
        f"# Repeated cross-validation: {report['search'].get('space', '?')}",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Data: `{d['source']}`; {d['files']} images {d['classes']}; fingerprint `{d['fingerprint'][:16]}`.",
        "",
        f"Protocol: {cv['repeats']} repeats of a {cv['k']}-fold nested cross-validation, split seeds "
        f"{cv['split_seeds']}; each repeat's folder holds its own report. Intervals: 95% bootstrap over duplicate "
        "groups of that repeat's pooled out-of-fold predictions; mean and SD: across the repeats.",
        "",
        "| split seed | " + " | ".join(METRIC_ROWS[k][0] for k in keys) + " | majority baseline |",
        "|---|" + "---|" * (len(keys) + 1),
    ]
    for rep in report["repeats"]:
        m = rep["metrics"]["pooled"]
        cells = " | ".join(fmt_ci(m[k], m[f"{k}_ci95"], pct=METRIC_ROWS[k][1]) for k in keys)
        lines.append(f"| {rep['split_seed']} | {cells} | {fmt_metric(m['majority_baseline'], pct=True)} |")
    means = " | ".join(fmt_mean_sd(spread, k, METRIC_ROWS[k][1]) for k in keys)
    lines += [f"| mean ± SD | {means} | {fmt_mean_sd(spread, 'majority_baseline', True)} |", ""]
    return "\n".join(lines)


def write_repeats_report(s: SearchSettings, reports: list[dict]) -> dict:
    report = repeats_report(s, reports)
    run_dir = Path(s.run_dir)
    atomic_write_json(run_dir / "report.json", report)
    atomic_write_text(run_dir / "report.md", repeats_markdown(report))
    write_html_report(run_dir)
    print("\n" + repeats_markdown(report).split("\n\n", 3)[-1])
    return report
