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
from tuning.trainable import BEST_WEIGHTS
from tuning.training import ReusedTrial, run_training
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
    best_cfg = refit_config(s, best)
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


def refit_config(s: SearchSettings, trial: dict) -> TrainConfig:
    # threads 0: the refit runs alone in the driver and may use every core (trials got --cpus-per-trial)
    return TrainConfig.from_dict(
        {**s.base, **trial["config"], "seed": s.seed, "max_epochs": trial["best_iteration"], "threads": 0}
    )


def reusable_trial(s: SearchSettings, trial: dict, cfg: TrainConfig) -> ReusedTrial | None:
    """The trial's best-epoch weights when a refit would repeat that trial exactly, else None.

    Exactly: the refit trains on the train split alone (``--refit-on train``: the trial's images), with the
    trial's config and seed, picks its epoch by the metric the search ranked on, and trains ``best_iteration``
    epochs; a learning-rate schedule that does not depend on the epoch count (cosine schedules end at the last
    epoch, so a shorter refit would follow another curve); and early stopping (``cfg.patience``) would not
    have stopped the refit before that epoch. Then the refit's best epoch is the trial's best epoch, trained
    on the same images the same way, and the trial's checkpoint (``EpochReport.keep_best``) is used. The trial
    ran with ``--cpus-per-trial`` threads where the refit would use every core, so the weights can differ from
    a retrained refit in the last bits of float arithmetic, not in what was trained."""
    if s.refit_on != "train" or cfg.scheduler != "none" or cfg.monitor != s.metric:
        return None
    best = trial["best_iteration"]
    if best is None or _early_stop_epoch(trial["history"], cfg.patience, cfg.monitor_mode) < best:
        return None
    checkpoint = trial.get("checkpoint")
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        path = Path(folder) / BEST_WEIGHTS
        if not path.is_file():
            return None
        saved = torch.load(path, map_location="cpu", weights_only=True)
    if saved.get("iteration") != best:
        return None  # the kept checkpoint is not the best epoch (e.g. a trial restored mid-way)
    curves = {
        name: [(i, v) for i, v in points if i <= best] for name, points in trial.get("curves", {}).items()
    }
    return ReusedTrial(trial_id=trial["trial_id"], epochs=best, state_dict=saved["state_dict"], curves=curves)


def _early_stop_epoch(history: list[tuple[int, float]], patience: int, mode: str) -> int:
    """The training iteration after which Lightning's ``EarlyStopping`` (min_delta 0, this ``patience``) would
    stop on this curve (a large number when it would not)."""
    best, waited = None, 0
    for iteration, value in history:
        if best is None or (value < best if mode == "min" else value > best):
            best, waited = value, 0
        else:
            waited += 1
            if waited >= patience:
                return iteration
    return 1 << 30


def _refit(
    s: SearchSettings, data, trial: dict, out_dir: Path, kind: str, weights, cache, outputs: dict, extra=None
) -> dict:
    """Train ``trial``'s config again (on ``s.refit_on``) into ``out_dir`` and test it once; ``outputs``
    receives its test predictions. A refit that would repeat the trial exactly takes the trial's best-epoch
    weights instead (``reusable_trial``) and is only tested."""
    cfg = refit_config(s, trial)
    reused = reusable_trial(s, trial, cfg)
    if reused is not None:
        print(
            f"trial {trial['trial_id']}'s best epoch ({reused.epochs}) is what this refit would train again "
            "(same images, config, seed and epochs): testing its weights instead"
        )
    return run_training(
        cfg,
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
        reused=reused,
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
