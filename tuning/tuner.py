"""Ray Tune's side of a search: the ASHA scheduler (built by one function), the Tuner (new or restored), and
what a finished or interrupted experiment holds (each trial's curve, how many are still unfinished)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ray import tune

from modules.dataset import PreparedData
from modules.weights import WeightsState
from search_spaces import to_tune
from tuning.asha import ResumableASHA
from tuning.config import TUNE_METRICS
from tuning.progress import TrialEvents
from tuning.ray_runtime import StoredCache
from tuning.search_alg import make_search_alg
from tuning.settings import SearchSettings, is_sampled
from tuning.tracking import trial_callbacks
from tuning.trainable import SharedCache, trainable

EXPERIMENT = "tune"


def storage_path(s: SearchSettings) -> str:
    """Where Ray Tune keeps the experiment: ``--storage``, else ``<run folder>/ray``."""
    return s.storage or str((Path(s.run_dir) / "ray").resolve())


def experiment_path(s: SearchSettings) -> str:
    return os.path.join(storage_path(s), EXPERIMENT)


def make_scheduler(s: SearchSettings) -> ResumableASHA:
    """ASHA over epochs (one Tune iteration per epoch); metric and mode come from the TuneConfig. Its rung
    records are rebuilt when the experiment is restored (``tuning.asha``)."""
    return ResumableASHA(
        time_attr="training_iteration",
        max_t=s.max_epochs,
        grace_period=s.grace_period,
        reduction_factor=s.reduction_factor,
    )


def make_tuner(
    s: SearchSettings,
    spec: dict,
    data: PreparedData,
    weights: WeightsState | None,
    cache: StoredCache | None,
    *,
    resume: bool,
) -> tune.Tuner:
    """The Tuner of a search on ``data``'s train/val splits, or the saved one restored (``resume``)."""
    metric, mode = s.rank
    resources = {"cpu": s.cpus_per_trial, "gpu": s.gpus_per_trial}
    base = {**s.base, "max_epochs": s.max_epochs, "seed": s.seed}
    # trials get the train and val images only: the test images are not in their data, and masked in the cache
    shared = SharedCache(cache.ref, data.splits) if cache is not None else None
    # a refit on the train split alone may repeat the best trial exactly: trials then keep their best epoch's
    # weights (one checkpoint per new best) for the refit to use instead (tuning.refit.reusable_trial)
    keep_best = (s.metric, mode) if s.refit_on == "train" else None
    fn = trainable(
        data.trial_data(exclude_test=True), base, weights, resources, cache=shared, keep_best=keep_best
    )
    path = experiment_path(s)
    if resume and tune.Tuner.can_restore(path):
        # the scheduler, searcher and callbacks come back from the saved experiment; ASHA's rung records are
        # rebuilt from the finished trials' results
        print(f"resuming the search in {path}: finished trials are kept, unfinished ones start again")
        return tune.Tuner.restore(path, trainable=fn, resume_unfinished=True, resume_errored=True)
    # one line per trial event; Ray's own status tables instead with --verbose
    events = TrialEvents(
        total=s.num_samples,
        sampled=[k for k, v in spec.items() if is_sampled(v)],
        metric=metric,
        mode=mode,
        max_epochs=s.max_epochs,
        concurrency=s.max_concurrent or max(1, int((os.cpu_count() or 1) / max(s.cpus_per_trial, 0.01))),
    )
    return tune.Tuner(
        fn,
        param_space=to_tune(spec),
        tune_config=tune.TuneConfig(
            metric=metric,
            mode=mode,
            scheduler=make_scheduler(s),
            num_samples=s.num_samples,
            reuse_actors=True,
            search_alg=make_search_alg(s),
        ),
        run_config=tune.RunConfig(
            name=EXPERIMENT,
            storage_path=storage_path(s),
            failure_config=tune.FailureConfig(max_failures=s.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            verbose=1 if s.verbose else 0,
            callbacks=[*trial_callbacks(s), *([] if s.verbose else [events])],
        ),
    )


def count_unfinished(grid, s: SearchSettings) -> int:
    """Trials not yet finished after ``fit`` returned: not yet created, or left RUNNING/PENDING/PAUSED by an
    interrupt. Read from Tune's saved experiment state, which is what ``Tuner.restore`` resumes from."""
    missing = max(0, s.num_samples - len(grid))
    states = sorted(Path(grid.experiment_path).glob("experiment_state-*.json"))
    if not states:
        return missing or len(grid) - grid.num_terminated - grid.num_errors
    statuses = trial_statuses(json.loads(states[-1].read_text()))
    return missing + sum(st not in ("TERMINATED", "ERROR") for st in statuses)


def trial_statuses(state: dict) -> list[str]:
    """The status of every trial in Tune's experiment state (``trial_data``: one [trial JSON, runtime JSON]
    pair per trial)."""
    return [json.loads(entry[0])["status"] for entry in state.get("trial_data", [])]


def collect_trials(grid, *, metric: str, mode: str) -> list[dict]:
    """One dict per trial: id, status, sampled config, epochs run, best value and epoch, curve, error."""
    trials = []
    for result in grid:
        df = result.metrics_dataframe
        curves = _curves(df)
        history = curves.get(TUNE_METRICS[metric], [])
        node = None
        if df is not None and metric in df.columns and "node_id" in df.columns and len(df):
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
                "compute_s": round(float(metrics.get("compute_s") or 0.0), 2),
                "cached": bool(metrics.get("cached", 0)),
                "error": _error_text(result.error),
                # the latest checkpoint Tune kept (with keep_best: the best epoch's weights), or None
                "checkpoint": result.checkpoint,
                "curves": curves,
            }
        )
    return sorted(trials, key=lambda t: t["trial_id"])


def _curves(df) -> dict[str, list[tuple[int, float]]]:
    """{Lightning metric name: [(training_iteration, value), ...]} of every metric trials report (the ranked
    metric's is the trial's ``history``)."""
    if df is None or "training_iteration" not in df.columns:
        return {}
    out = {}
    for tune_name, name in TUNE_METRICS.items():
        if tune_name in df.columns:
            rows = df.dropna(subset=[tune_name])
            out[name] = [
                (int(i), float(v)) for i, v in zip(rows["training_iteration"], rows[tune_name], strict=True)
            ]
    return out


def _plain(v):
    return v.item() if hasattr(v, "item") else v


def _error_text(err) -> str | None:
    if err is None:
        return None
    text = str(err).strip().splitlines()
    return (text[-1] if text else type(err).__name__)[:500]
