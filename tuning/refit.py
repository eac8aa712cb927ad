"""The end of a search: the trials table and curves, the refit of the best config (or the N best, averaged) on
the same split, its one test, and the report."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from modules.dataset import PreparedData
from modules.files import atomic_write_json, atomic_write_text
from modules.statistics import classification_metrics
from tuning.backbone import cache_summary
from tuning.cli import warn
from tuning.config import TrainConfig
from tuning.html_report import write_html_report
from tuning.plots import plot_confusion, plot_roc, plot_roc_ovr, plot_trial_curves
from tuning.provenance import versions
from tuning.search_report import render_markdown, search_block, summary_table, write_trials_csv
from tuning.settings import SearchSettings
from tuning.training import run_training
from tuning.tuner import collect_trials


def refit_and_report(
    s: SearchSettings,
    data: PreparedData,
    grid,
    weights,
    *,
    search_seconds: float,
    cache=None,
    test_outputs: dict | None = None,
) -> dict | None:
    """Trials table and curves, the refit of the best config on the same split, the report."""
    run_dir = Path(s.run_dir)
    metric, mode = s.rank
    trials = collect_trials(grid, metric=metric, mode=mode)
    write_trials_csv(trials, run_dir / "trials.csv")
    curves = plot_trial_curves(trials, run_dir / "trial_curves.png", metric=metric, max_t=s.max_epochs)
    ranked = _ranked(trials, mode=mode, run_dir=run_dir)
    if not ranked:
        return None
    best = ranked[0]
    best_cfg = _refit_config(s, best)
    print(
        f"\nbest trial {best['trial_id']}: {metric} {best['best_value']:.4f} at epoch {best['best_iteration']}; "
        f"refitting it for {best_cfg.max_epochs} epochs on the {s.refit_on} images of the same split, then "
        "testing once"
    )
    started = time.perf_counter()
    outputs: dict = {}
    extra = _search_extra(s, data, trials, best, search_seconds=search_seconds, cache=cache)
    report = _refit(s, data, best, run_dir, "search", weights, cache, outputs, extra=extra)
    if s.ensemble > 1:
        _refit_ensemble(s, data, ranked[: s.ensemble], weights, cache, report, outputs)
    if test_outputs is not None:
        test_outputs.update(outputs)
    report["time_s"]["refit"] = round(time.perf_counter() - started, 2)
    report["time_s"]["search"] = round(search_seconds, 2)
    _write_report(report, trials, curves, run_dir)
    return report


def _ranked(trials: list[dict], *, mode: str, run_dir: Path) -> list[dict]:
    """The trials that reported a value, best first; none (with a warning) when every trial failed."""
    ok = [t for t in trials if t["best_value"] is not None]
    if not ok:
        warn(f"every trial failed; see {run_dir / 'trials.csv'} for the errors")
    return sorted(ok, key=lambda t: t["best_value"], reverse=mode == "max")


def _write_report(report: dict, trials: list[dict], curves: Path, run_dir: Path) -> None:
    """Add the trials table and curves to the refit's report, write report.json and report.md, print the
    summary."""
    report["artifacts"]["plots"] = [curves.name, *report["artifacts"]["plots"]]
    report["artifacts"]["trials"] = "trials.csv"
    atomic_write_json(run_dir / "report.json", report)
    atomic_write_text(run_dir / "report.md", render_markdown(report, trials))
    write_html_report(run_dir)
    print(summary_table(report, run_dir))


def _search_extra(
    s: SearchSettings, data: PreparedData, trials: list[dict], best: dict, *, search_seconds: float, cache
) -> dict:
    """What a search adds to the refit's report: the best trial and the search's settings, counts and cache."""
    return {
        "best_trial": {
            k: best[k] for k in ("trial_id", "config", "best_value", "best_iteration", "iterations")
        },
        "search": {
            **search_block(
                s,
                trials,
                search_seconds,
                images_per_epoch=len(data.indices("train")) + len(data.indices("val")),
            ),
            "cache": cache_summary(cache, sum(bool(t.get("cached")) for t in trials)),
        },
        "versions": versions(*s.libraries()),  # the refit's, with the search's optional libraries
    }


def _refit_config(s: SearchSettings, trial: dict) -> TrainConfig:
    # threads 0: the refit runs alone in the driver and may use every core (trials got --cpus-per-trial)
    return TrainConfig.from_dict(
        {**s.base, **trial["config"], "seed": s.seed, "max_epochs": trial["best_iteration"], "threads": 0}
    )


def _refit(
    s: SearchSettings, data, trial: dict, out_dir: Path, kind: str, weights, cache, outputs: dict, extra=None
) -> dict:
    """Train ``trial``'s config again (on ``s.refit_on``) into ``out_dir`` and test it once; ``outputs``
    receives its test predictions."""
    return run_training(
        _refit_config(s, trial),
        data,
        out_dir,
        command=s.command,
        kind=kind,
        progress=False,
        backbone_state=weights,
        cache=cache,
        test_outputs=outputs,
        extra_report=extra,
        train_on=s.refit_on,
    )


def _refit_ensemble(
    s: SearchSettings, data: PreparedData, members: list[dict], weights, cache, report: dict, outputs: dict
) -> None:
    """Refit the other top trials too (``--ensemble N``); the test metrics become those of the mean of the
    members' class probabilities. The single best model's metrics stay under ``metrics.test_single``; each
    member's run folder (with its model.pt) is ``ensemble/member-<rank>/``."""
    probs = [outputs["probs_all"]]
    for rank, trial in enumerate(members[1:], start=2):
        print(
            f"ensemble member {rank} of {len(members)}: trial {trial['trial_id']}, {trial['best_iteration']} epochs"
        )
        out: dict = {}
        member_dir = Path(s.run_dir) / "ensemble" / f"member-{rank}"
        _refit(s, data, trial, member_dir, "ensemble-member", weights, cache, out)
        if not torch.equal(out["labels"], outputs["labels"]):
            raise RuntimeError("ensemble members were tested on different images")
        probs.append(out["probs_all"])
    mean = torch.stack(probs).mean(dim=0)
    single = report["metrics"]["test"]
    report["metrics"]["test_single"] = single
    report["metrics"]["test"] = classification_metrics(
        mean.numpy(),
        outputs["labels"].numpy(),
        list(data.images.classes),
        positive=data.positive,
        majority_baseline=single["majority_baseline"],
        seed=s.seed,
    )
    report["ensemble"] = {
        "size": len(members),
        "method": "mean of the members' class probabilities",
        "members": [
            {"trial_id": t["trial_id"], "config": t["config"], "epochs": t["best_iteration"]} for t in members
        ],
    }
    outputs["probs_all"] = mean
    if data.positive is not None:
        outputs["probs"] = mean[:, data.positive]
    _plot_test(report["metrics"]["test"], mean.numpy(), outputs["labels"].numpy(), data, Path(s.run_dir))


def _plot_test(test: dict, probs, labels, data: PreparedData, run_dir: Path) -> None:
    """The test confusion matrix and ROC of the ensemble, over the refit's plots of its best member."""
    title = "test confusion matrix (ensemble)"
    plot_confusion(
        test["confusion_matrix"], test["confusion_labels"], run_dir / "confusion_matrix.png", title=title
    )
    if data.positive is not None:
        pos = data.positive
        plot_roc(probs[:, pos], labels == pos, run_dir / "roc.png", title="ROC (test, ensemble)")
    else:
        plot_roc_ovr(
            probs, labels, list(data.images.classes), run_dir / "roc.png", title="ROC (test, ensemble)"
        )
