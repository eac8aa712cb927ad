"""What a search leaves behind: the trials table, the search block of its report, report.md, a summary table."""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from pathlib import Path

from modules.files import atomic_write_text
from tuning.formatting import fmt_ci, fmt_config, is_binary, metric_rows, metrics_markdown
from tuning.search_alg import search_alg_info
from tuning.settings import SearchSettings


def write_trials_csv(trials: list[dict], path: Path) -> Path:
    keys = sorted({k for t in trials for k in t["config"]})
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(
        [
            "trial_id",
            "status",
            "iterations",
            "best_value",
            "best_iteration",
            "last_value",
            "time_s",
            "compute_s",
            "node_id",
            *keys,
            "error",
        ]
    )
    for t in trials:
        w.writerow(
            [
                t["trial_id"],
                t["status"],
                t["iterations"],
                t["best_value"],
                t["best_iteration"],
                t["last_value"],
                t["time_s"],
                t.get("compute_s"),
                t["node_id"],
                *[t["config"].get(k) for k in keys],
                t["error"] or "",
            ]
        )
    return atomic_write_text(path, buf.getvalue())


def summary_table(report: dict, run_dir: Path) -> str:
    m = report["metrics"]["test"]
    best = report["best_trial"]
    rows = [
        ("data", report["data"]["source"] + (" (SYNTHETIC)" if report["data"]["synthetic"] else "")),
        ("best config", fmt_config(best["config"])),
        (
            "best trial",
            f"{best['trial_id']} ({report['search']['metric']} {best['best_value']:.4f} at epoch "
            f"{best['best_iteration']})",
        ),
        *_test_rows(m),
        (
            "trials",
            "{total} ({terminated} finished, {stopped_early} stopped early by ASHA, {error} failed)".format(
                **report["search"]["trials"]
            ),
        ),
        ("report", f"{run_dir}/report.html (open it in a browser)"),
        ("files", f"{run_dir}/ (report.json, report.md, trials.csv, split.csv, model.pt, plots)"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(["", *[f"{k:<{width}}  {v}" for k, v in rows]])


FINAL_FIT = "none: a final fit on every image (--final); score model.pt with python -m tuning.evaluate"


def _test_rows(m: dict | None) -> list[tuple[str, str]]:
    if m is None:
        return [("test", FINAL_FIT)]
    return [
        ("test accuracy (95% CI)", fmt_ci(m["accuracy"], m["accuracy_ci95"]) + f"  n={m['n']}"),
        ("majority baseline", f"{100 * m['majority_baseline']:.1f}%"),
        *[(name + (" (95% CI)" if "AUC" in name else ""), value) for name, value in metric_rows(m)],
    ]


def _test_markdown(report: dict, m: dict | None) -> list[str]:
    if m is None:
        return ["## Test result", "", f"Test split: {FINAL_FIT}.", ""]
    return [
        "## Test result (refit of the best config, test split used once)",
        "",
        *_ensemble_lines(report),
        *metrics_markdown(m),
        *_f1_row(m),
        "",
        _confusion_line(m),
        "",
    ]


def _f1_row(m: dict) -> list[str]:
    if not is_binary(m):
        return []
    return [f"| F1 | {m['f1']:.3f} |" if not math.isnan(m["f1"]) else "| F1 | n/a |"]


def _confusion_line(m: dict) -> str:
    if is_binary(m):
        return f"Confusion matrix [[tn, fp], [fn, tp]]: {m['confusion_matrix']}. Intervals: {m['interval_method']}."
    order = ", ".join(m["confusion_labels"])
    return (
        f"Confusion matrix (rows true, columns predicted; {order}): {m['confusion_matrix']}. "
        f"Intervals: {m['interval_method']}."
    )


def _ensemble_lines(report: dict) -> list[str]:
    e = report.get("ensemble")
    if not e:
        return []
    single = report["metrics"]["test_single"]
    ids = ", ".join(f"`{m['trial_id']}`" for m in e["members"])
    return [
        f"Ensemble of the {e['size']} best trials ({ids}): {e['method']}. The best trial alone: accuracy "
        f"{fmt_ci(single['accuracy'], single['accuracy_ci95'])}.",
        "",
    ]


def render_markdown(report: dict, trials: list[dict]) -> str:
    m = report["metrics"]["test"]
    s = report["search"]
    d = report["data"]
    lines = [
        f"# Search report: {s['space']}",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Data: `{d['source']}`{' **(synthetic phantom set, not real scans)**' if d['synthetic'] else ''}; "
        f"{d['files']} images {json.dumps(d['classes'])}; fingerprint `{d['fingerprint'][:16]}`; grouped split "
        f"seed {d['split_seed']} (see split.csv).",
        "",
        *_test_markdown(report, m),
        "## Search",
        "",
        f"ASHA on {s['metric']} (max {s['scheduler']['max_t']} epochs, grace period {s['scheduler']['grace_period']}, "
        f"reduction factor {s['scheduler']['reduction_factor']}), {s['num_samples']} samples drawn by "
        f"{alg_text(s.get('search_alg'))}, seed {s['seed']}, "
        f"{s['wall_time_s']:.0f} s. Best trial `{report['best_trial']['trial_id']}`: "
        f"{fmt_config(report['best_trial']['config'])}; refit for {report['config']['max_epochs']} epochs.",
        "",
        *_time_split_lines(s),
        "| trial | status | epochs | best | at epoch | config |",
        "|---|---|---|---|---|---|",
    ]
    for t in trials:
        best = f"{t['best_value']:.4f}" if t["best_value"] is not None else "-"
        lines.append(
            f"| {t['trial_id']} | {t['status']} | {t['iterations']} | {best} | {t['best_iteration'] or '-'} "
            f"| {fmt_config(t['config'])} |"
        )
    if s["failed_trials"]:
        lines += ["", "Failed trials:", *[f"- `{f['trial_id']}`: {f['error']}" for f in s["failed_trials"]]]
    lines += ["", "Plots: " + ", ".join(f"![{p}]({p})" for p in report["artifacts"]["plots"]), ""]
    return "\n".join(lines)


def _time_split_lines(s: dict) -> list[str]:
    split = s.get("trial_time_split_s")
    if not split or not split["total"]:
        return []
    share = 100 * split["compute"] / split["total"]
    return [
        f"Trial time: {split['total']:.0f} s over all trials, {split['compute']:.0f} s ({share:.0f}%) inside "
        f"training and validation batches (forward, backward, optimiser step), {split['total'] - split['compute']:.0f} s "
        "on the rest (start-up, data loading, Lightning's loops, metrics, reports); per trial in trials.csv "
        "(`time_s`, `compute_s`).",
        "",
    ]


def alg_text(alg: dict | None) -> str:
    """How the configs were drawn, in words (reports written before the choice existed drew them at random)."""
    if not alg or alg["name"] == "random":
        return "random search"
    return (
        f"Optuna's TPE ({alg['n_startup_trials']} random start-up trials, at most {alg['max_concurrent']} "
        "trials at once)"
    )


def search_block(s: SearchSettings, trials: list[dict], seconds: float, *, images_per_epoch: int) -> dict:
    statuses = [t["status"] for t in trials]
    rates = sorted(images_per_epoch * t["iterations"] / t["time_s"] for t in trials if t["time_s"] > 0)
    return {
        "space": s.space,
        "space_spec": s.spec(),
        "scheduler": {
            "name": "ASHA",
            "time_attr": "training_iteration (epochs)",
            "max_t": s.max_epochs,
            "grace_period": s.grace_period,
            "reduction_factor": s.reduction_factor,
        },
        "search_alg": search_alg_info(s),
        "metric": s.metric,
        "refit_on": s.refit_on,
        "num_samples": s.num_samples,
        "seed": s.seed,
        "resources_per_trial": {"cpu": s.cpus_per_trial, "gpu": s.gpus_per_trial},
        "trials": {
            "total": len(trials),
            "terminated": statuses.count("TERMINATED"),
            "error": statuses.count("ERROR"),
            "stopped_early": sum(
                t["iterations"] < s.max_epochs and t["status"] == "TERMINATED" for t in trials
            ),
        },
        "failed_trials": [{"trial_id": t["trial_id"], "error": t["error"]} for t in trials if t["error"]],
        "wall_time_s": round(seconds, 2),
        "trial_time_s_median": statistics.median([t["time_s"] for t in trials]) if trials else math.nan,
        # images a trial pushes through per second, training and validation together, start-up included
        "trial_images_per_s_median": round(statistics.median(rates), 1) if rates else math.nan,
        "trials_per_hour": round(len(trials) / seconds * 3600, 1) if seconds > 0 else math.nan,
        # where the trials' time went: inside training/validation batches, and everything else
        "trial_time_split_s": {
            "total": round(sum(t["time_s"] for t in trials), 2),
            "compute": round(sum(t.get("compute_s") or 0.0 for t in trials), 2),
        },
    }
