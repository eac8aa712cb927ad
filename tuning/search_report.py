"""What a search leaves behind: the trials table, every trial's validation curve, report.md, a summary table."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from tuning.files import atomic_write_text  # noqa: E402
from tuning.report import fmt_ci, is_binary, metric_rows  # noqa: E402


def collect_trials(grid, *, metric: str, mode: str) -> list[dict]:
    """One dict per trial: id, status, sampled config, epochs run, best value and epoch, curve, error."""
    trials = []
    for result in grid:
        df = result.metrics_dataframe
        history: list[tuple[int, float]] = []
        node = None
        if df is not None and metric in df.columns:
            rows = df.dropna(subset=[metric])
            history = [
                (int(i), float(v)) for i, v in zip(rows["training_iteration"], rows[metric], strict=True)
            ]
            if "node_id" in df.columns and len(df):
                node = str(df["node_id"].iloc[-1])
        best_iter, best_value = (None, None)
        if history:
            pick = min if mode == "min" else max
            best_iter, best_value = pick(history, key=lambda h: h[1])
        metrics = result.metrics or {}
        trials.append(
            {
                "trial_id": metrics.get("trial_id") or Path(str(result.path)).name,
                "status": "ERROR" if result.error else "TERMINATED",
                "config": {k: _plain(v) for k, v in (result.config or {}).items()},
                "iterations": history[-1][0] if history else 0,
                "best_value": best_value,
                "best_iteration": best_iter,
                "last_value": history[-1][1] if history else None,
                "history": history,
                "node_id": node,
                "time_s": round(float(metrics.get("time_total_s") or 0.0), 2),
                "cached": bool(metrics.get("cached", 0)),
                "error": _error_text(result.error),
            }
        )
    return sorted(trials, key=lambda t: t["trial_id"])


def _plain(v):
    return v.item() if hasattr(v, "item") else v


def _error_text(err) -> str | None:
    if err is None:
        return None
    text = str(err).strip().splitlines()
    return (text[-1] if text else type(err).__name__)[:500]


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
                t["node_id"],
                *[t["config"].get(k) for k in keys],
                t["error"] or "",
            ]
        )
    return atomic_write_text(path, buf.getvalue())


def plot_trial_curves(trials: list[dict], path: Path, *, metric: str, max_t: int) -> Path:
    """Every trial's validation curve; a cross marks a trial that ASHA stopped before max_t."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for t in trials:
        if not t["history"]:
            continue
        xs, ys = zip(*t["history"], strict=True)
        (line,) = ax.plot(xs, ys, "-", lw=1, alpha=0.8)
        if xs[-1] < max_t and t["status"] == "TERMINATED":
            ax.plot(xs[-1], ys[-1], "x", color=line.get_color(), ms=8)
    ax.plot([], [], "kx", label="stopped by ASHA")
    ax.set_xlabel("epoch (training iteration)")
    ax.set_ylabel(metric.replace("_", "/"))
    ax.set_title(f"validation curves of {len(trials)} trials")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _fmt_config(cfg: dict) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(cfg.items()))


def summary_table(report: dict, run_dir: Path) -> str:
    m = report["metrics"]["test"]
    best = report["best_trial"]
    rows = [
        ("data", report["data"]["source"] + (" (SYNTHETIC)" if report["data"]["synthetic"] else "")),
        ("best config", _fmt_config(best["config"])),
        (
            "best trial",
            f"{best['trial_id']} ({report['search']['metric']} {best['best_value']:.4f} at epoch "
            f"{best['best_iteration']})",
        ),
        ("test accuracy (95% CI)", fmt_ci(m["accuracy"], m["accuracy_ci95"]) + f"  n={m['n']}"),
        ("majority baseline", f"{100 * m['majority_baseline']:.1f}%"),
        *[(name + (" (95% CI)" if "AUC" in name else ""), value) for name, value in metric_rows(m)],
        (
            "trials",
            "{total} ({terminated} finished, {stopped_early} stopped early by ASHA, {error} failed)".format(
                **report["search"]["trials"]
            ),
        ),
        ("files", f"{run_dir}/ (report.json, report.md, trials.csv, split.csv, model.pt, plots)"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(["", *[f"{k:<{width}}  {v}" for k, v in rows]])


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
        "## Test result (refit of the best config, test split used once)",
        "",
        *_ensemble_lines(report),
        "| metric | value (95% CI) |",
        "|---|---|",
        f"| accuracy | {fmt_ci(m['accuracy'], m['accuracy_ci95'])} (n={m['n']}) |",
        f"| majority baseline | {100 * m['majority_baseline']:.1f}% |",
        *[f"| {name} | {value} |" for name, value in metric_rows(m)],
        *_f1_row(m),
        "",
        _confusion_line(m),
        "",
        "## Search",
        "",
        f"ASHA on {s['metric']} (max {s['scheduler']['max_t']} epochs, grace period {s['scheduler']['grace_period']}, "
        f"reduction factor {s['scheduler']['reduction_factor']}), {s['num_samples']} samples, seed {s['seed']}, "
        f"{s['wall_time_s']:.0f} s. Best trial `{report['best_trial']['trial_id']}`: "
        f"{_fmt_config(report['best_trial']['config'])}; refit for {report['config']['max_epochs']} epochs.",
        "",
        "| trial | status | epochs | best | at epoch | config |",
        "|---|---|---|---|---|---|",
    ]
    for t in trials:
        best = f"{t['best_value']:.4f}" if t["best_value"] is not None else "-"
        lines.append(
            f"| {t['trial_id']} | {t['status']} | {t['iterations']} | {best} | {t['best_iteration'] or '-'} "
            f"| {_fmt_config(t['config'])} |"
        )
    if s["failed_trials"]:
        lines += ["", "Failed trials:", *[f"- `{f['trial_id']}`: {f['error']}" for f in s["failed_trials"]]]
    lines += ["", "Plots: " + ", ".join(f"![{p}]({p})" for p in report["artifacts"]["plots"]), ""]
    return "\n".join(lines)
