"""The search itself: start or join Ray, run the Tuner with ASHA, collect trials, refit the best, report."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import statistics
import time
from dataclasses import asdict
from pathlib import Path

import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import BasicVariantGenerator

from modules.dataset import PreparedData, resolve_data
from modules.networks import WeightsState, resolve_weights
from search_spaces import to_tune
from tuning.cli import warn
from tuning.engine import TrainConfig
from tuning.files import atomic_write_json, atomic_write_text
from tuning.search import LOCALHOSTS, SearchSettings, effective_spec
from tuning.search_report import (
    collect_trials,
    plot_trial_curves,
    render_markdown,
    summary_table,
    write_trials_csv,
)
from tuning.train import run_training
from tuning.trial import SharedCache, trainable

EXPERIMENT = "tune"


def start_ray(s: SearchSettings) -> None:
    """Join ``s.address``, or start a local Ray with its dashboard on ``s.dashboard_host`` (localhost)."""
    if ray.is_initialized():
        return
    auth_mode = os.environ.get("RAY_AUTH_MODE")  # unset: on for a local Ray; set to anything but token: off
    if auth_mode is not None and auth_mode.lower() != "token":
        warn(
            f"RAY_AUTH_MODE={auth_mode}: Ray's token authentication is off; anyone who reaches its ports can run "
            "code"
        )
    if s.address:
        ray.init(address=s.address, log_to_driver=False)
        print(f"joined the Ray cluster at {s.address}: {ray.cluster_resources()}")
        return
    if s.dashboard and s.dashboard_host not in LOCALHOSTS:
        warn(
            f"the Ray dashboard will listen on {s.dashboard_host}, not only on this machine. Ray's dashboard and "
            "job API run arbitrary code for whoever reaches them (the class of attacks on exposed, "
            "unauthenticated Ray dashboards, e.g. ShadowRay): keep token authentication on, and prefer an SSH "
            "tunnel to 127.0.0.1"
        )
    context = ray.init(
        include_dashboard=s.dashboard,
        dashboard_host=s.dashboard_host,
        dashboard_port=s.dashboard_port,
        log_to_driver=False,
        configure_logging=True,
        logging_level="warning",
    )
    if s.dashboard and context.dashboard_url:
        print(
            f"Ray dashboard: http://{context.dashboard_url}  (log in with the token in ~/.ray/auth_token, "
            "or `ray get-auth-token`)"
        )


def _weights_for(spec: dict, s: SearchSettings) -> WeightsState | None:
    model = spec.get("model", s.base.get("model", TrainConfig.model))
    if model != "resnet50" and not isinstance(model, dict):  # a space may also choose the model
        return None
    state = resolve_weights(s.base.get("weights", "imagenet"))
    if state.tensors is None:  # random init: drawn once here, so that the cache, every trial and the refit
        import torch  # start from the same backbone (the cache is computed with it)

        from modules.networks import build_network

        generator_state = torch.random.get_rng_state()
        torch.manual_seed(s.seed)
        backbone = build_network("resnet50", num_classes=2, weights="none").backbone
        torch.random.set_rng_state(generator_state)
        state = WeightsState(dict(backbone.state_dict()), f"none (random init, seed {s.seed})")
    return state


def _storage(s: SearchSettings) -> str:
    return s.storage or str((Path(s.run_dir) / "ray").resolve())


LEAKY_WARNING = (
    "--split random: files are split one by one, so duplicates of one scan can sit in train and test. This "
    "result is LEAKY and inflated; it exists only to show by how much. Publish the grouped result"
)


def run_search(s: SearchSettings, *, resume: bool = False) -> dict | None:
    run_dir = Path(s.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    data = resolve_data(
        s.data,
        seed=s.split_seed,
        strict=s.strict,
        positive_class=s.positive_class,
        warn=warn,
        split=s.split,
    )
    if data.leaky:
        warn(LEAKY_WARNING)
    saved = run_dir / "search.json"
    if resume:
        previous = json.loads(saved.read_text()).get("data_fingerprint")
        if previous and previous != data.images.fingerprint:
            raise ValueError(
                f"--resume: the data at {s.data or 'the phantom set'} changed since the search started "
                f"(fingerprint {data.images.fingerprint[:12]}, was {previous[:12]})"
            )
        # report.md is written last, after the final report.json (the refit writes an earlier report.json)
        if (run_dir / "report.json").is_file() and (run_dir / "report.md").is_file():
            print(f"{run_dir} is complete already (report.json and report.md exist); nothing to resume")
            return json.loads((run_dir / "report.json").read_text())
    else:
        atomic_write_json(saved, {**asdict(s), "data_fingerprint": data.images.fingerprint})
    spec = effective_spec(s)
    weights = _weights_for(spec, s)
    if s.cv:
        from tuning.cv import run_cv

        return run_cv(s, data, spec, weights, resume=resume)
    atomic_write_text(run_dir / "split.csv", data.split_csv())
    print(
        f"data: {data.images.source}{' (SYNTHETIC phantom set)' if data.synthetic else ''}: "
        f"{len(data.images.records)} images {data.images.class_counts()}, "
        f"split {', '.join(f'{k} {data.splits.count(k)}' for k in ('train', 'val', 'test'))}"
        f"{' (LEAKY random split)' if data.leaky else ''}"
    )
    cache = share_cache(s, build_cache(s, spec, data, weights))
    return search_split(s, data, spec, weights, cache, resume=resume)


def search_split(
    s: SearchSettings,
    data: PreparedData,
    spec: dict,
    weights: WeightsState | None,
    cache,
    *,
    resume: bool,
    resume_dir: str | None = None,
    test_outputs: dict | None = None,
) -> dict | None:
    """Search on ``data``'s train/val splits, refit the best config, test it once on the test split."""
    start_ray(s)
    started = time.perf_counter()
    handler = signal.getsignal(signal.SIGINT)
    try:
        grid = _fit(s, spec, data, weights, cache, resume=resume)
    finally:  # Ray Tune installs its own SIGINT handler; Ctrl+C during the refit must interrupt it
        signal.signal(signal.SIGINT, handler)
    search_seconds = time.perf_counter() - started
    unfinished = count_unfinished(grid, s)
    if unfinished:
        print(
            f"\nsearch interrupted: {unfinished} of {len(grid)} trials unfinished (finished ones are saved). "
            f"Finish it with:\n  python -m tuning.search --resume {resume_dir or s.run_dir}"
        )
        raise KeyboardInterrupt
    return finish(
        s, data, grid, weights, search_seconds=search_seconds, cache=cache, test_outputs=test_outputs
    )


def _space_values(spec: dict, key: str, default) -> list:
    """The values an entry of a space can take (a constant, a choice, or the default when absent)."""
    v = spec.get(key, default)
    return list(v["choice"]) if isinstance(v, dict) and "choice" in v else [v]


def build_cache(
    s: SearchSettings,
    spec: dict,
    data: PreparedData,
    weights: WeightsState | None,
    *,
    every_image: bool = False,
):
    """The feature cache for a ResNet50 space (once per experiment, on the GPU when there is one), or None.

    ``every_image``: training views and the evaluation view of every image (a cross-validation: each image
    is trained on in some folds and tested in one)."""
    models = _space_values(spec, "model", s.base.get("model", TrainConfig.model))
    if not s.cache or models != ["resnet50"]:
        return None
    import torch

    from modules.feature_cache import build_feature_cache
    from modules.networks import build_network, load_backbone_state

    # the space's constants (e.g. crop, jitter) are part of every trial's preprocessing: the cache must match
    constants = {k: v for k, v in spec.items() if not (isinstance(v, dict) and len(v) == 1)}
    base = TrainConfig.from_dict({**s.base, **constants, "max_epochs": s.max_epochs})
    starts = _space_values(spec, "stage2_epoch", base.stage2_epoch)
    unfreezes = any(
        not isinstance(v, int) or v < s.max_epochs for v in starts
    )  # a sampled range may unfreeze
    depths = set(_space_values(spec, "unfreeze_depth", base.unfreeze_depth)) if unfreezes else set()
    network = build_network("resnet50", num_classes=len(data.images.classes), weights="none")
    if weights is not None and weights.tensors is not None:
        load_backbone_state(network, weights.tensors, weights.description)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    td = data.trial_data()
    cache = build_feature_cache(
        network,
        td.images,
        td.targets,
        td.splits,
        preprocessing=base.preprocessing,
        depths=depths,
        views=s.cache_views,
        seed=s.seed,
        device=device,
        max_bytes=int(s.cache_max_gb * 1e9),
        precision=s.cache_precision,
        train_on=[True] * len(td.splits) if every_image else None,
        evaluate_on=[True] * len(td.splits) if every_image else None,
    )
    cache.info["preprocessing"] = base.preprocessing.to_dict()
    cuts = f", cuts for unfreeze depth {list(cache.depths)}" if cache.depths else ""
    print(
        f"feature cache: {cache.nbytes / 1e6:.1f} MB (float16, computed in {s.cache_precision}; {s.cache_views} views per training image; pooled "
        f"features{cuts}), built once in {cache.build_seconds:.1f} s on {device}; shared through Ray's object store"
    )
    return cache


def _cache_block(s: SearchSettings, cache, trials: list[dict]) -> dict:
    if cache is None:
        return {"enabled": False}
    return {
        "enabled": True,
        "views": cache.views,
        "depths": list(cache.depths),
        "megabytes": round(cache.nbytes / 1e6, 1),
        "build_s": round(cache.build_seconds, 2),
        "precision": cache.info.get("precision"),
        "trials_on_cache": sum(bool(t.get("cached")) for t in trials),
    }


def make_scheduler(s: SearchSettings) -> ASHAScheduler:
    """ASHA over epochs (one Tune iteration per epoch); metric and mode come from the TuneConfig."""
    return ASHAScheduler(
        time_attr="training_iteration",
        max_t=s.max_epochs,
        grace_period=s.grace_period,
        reduction_factor=s.reduction_factor,
    )


def _fit(
    s: SearchSettings, spec: dict, data: PreparedData, weights: WeightsState | None, cache, *, resume: bool
):
    metric, mode = s.rank
    resources = {"cpu": s.cpus_per_trial, "gpu": s.gpus_per_trial}
    base = {**s.base, "max_epochs": s.max_epochs, "seed": s.seed}
    # trials get the train and val images only: the test images are not in their data, and masked in the cache
    shared = SharedCache(_stored(cache), data.splits) if cache is not None else None
    fn = trainable(data.trial_data(exclude_test=True), base, weights, resources, cache=shared)
    path = os.path.join(_storage(s), EXPERIMENT)
    if resume and tune.Tuner.can_restore(path):
        print(f"resuming the search in {path}: finished trials are kept, unfinished ones start again")
        tuner = tune.Tuner.restore(path, trainable=fn, resume_unfinished=True, resume_errored=True)
    else:
        scheduler = ASHAScheduler(
            time_attr="training_iteration",
            max_t=s.max_epochs,
            grace_period=s.grace_period,
            reduction_factor=s.reduction_factor,
        )
        tuner = tune.Tuner(
            fn,
            param_space=to_tune(spec),
            tune_config=tune.TuneConfig(
                metric=metric,
                mode=mode,
                scheduler=scheduler,
                num_samples=s.num_samples,
                reuse_actors=True,
                # the generator seeds the sampled configs and also enforces the concurrency limit
                search_alg=BasicVariantGenerator(random_state=s.seed, max_concurrent=s.max_concurrent),
            ),
            run_config=tune.RunConfig(
                name=EXPERIMENT,
                storage_path=_storage(s),
                failure_config=tune.FailureConfig(max_failures=s.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                verbose=1,
            ),
        )
    return tuner.fit()


_STORED: dict[int, tuple[object, object]] = {}


def share_cache(s: SearchSettings, cache):
    """Put a freshly built cache into Ray's object store and return the store's zero-copy view of it, so that
    the driver (which refits on it) and the store hold one copy of the arrays between them, not two."""
    if cache is None:
        return None
    start_ray(s)
    ref = ray.put(cache)
    from ray.util.client import ray as client

    if client.is_connected():  # Ray Client: a get would copy the cache back over the network
        _STORED[id(cache)] = (cache, ref)
        return cache
    view = ray.get(ref)
    _STORED[id(view)] = (view, ref)
    return view


def _stored(cache):
    """The cache's reference in Ray's object store, put there once per cache and driver."""
    key = id(cache)
    if key not in _STORED or _STORED[key][0] is not cache:
        _STORED[key] = (cache, ray.put(cache))
    return _STORED[key][1]


def count_unfinished(grid, s: SearchSettings) -> int:
    """Trials not yet finished after ``fit`` returned: not yet created, or left RUNNING/PENDING/PAUSED by an
    interrupt. Read from Tune's saved experiment state, which is what ``Tuner.restore`` resumes from."""
    missing = max(0, s.num_samples - len(grid))
    states = sorted(Path(grid.experiment_path).glob("experiment_state-*.json"))
    if not states:
        return missing or len(grid) - grid.num_terminated - grid.num_errors
    text = states[-1].read_text()
    statuses = re.findall(r'\\?"status\\?": \\?"([A-Z]+)', text)
    return missing + sum(st not in ("TERMINATED", "ERROR") for st in statuses)


def finish(
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
    ok = [t for t in trials if t["best_value"] is not None]
    if not ok:
        warn(f"every trial failed; see {run_dir / 'trials.csv'} for the errors")
        return None
    ranked = sorted(ok, key=lambda t: t["best_value"], reverse=mode == "max")
    best = ranked[0]
    best_cfg = _refit_config(s, best)
    print(
        f"\nbest trial {best['trial_id']}: {metric} {best['best_value']:.4f} at epoch {best['best_iteration']}; "
        f"refitting it for {best_cfg.max_epochs} epochs on the same split, then testing once"
    )
    started = time.perf_counter()
    outputs: dict = {}
    report = run_training(
        best_cfg,
        data,
        run_dir,
        command=s.command,
        kind="search",
        progress=False,
        backbone_state=weights,
        cache=cache,
        test_outputs=outputs,
        extra_report={
            "best_trial": {
                k: best[k] for k in ("trial_id", "config", "best_value", "best_iteration", "iterations")
            },
            "search": {
                **_search_block(
                    s,
                    trials,
                    search_seconds,
                    images_per_epoch=len(data.indices("train")) + len(data.indices("val")),
                ),
                "cache": _cache_block(s, cache, trials),
            },
        },
    )
    if s.ensemble > 1:
        _refit_ensemble(s, data, ranked[: s.ensemble], weights, cache, report, outputs)
    if test_outputs is not None:
        test_outputs.update(outputs)
    report["time_s"]["refit"] = round(time.perf_counter() - started, 2)
    report["time_s"]["search"] = round(search_seconds, 2)
    report["artifacts"]["plots"] = [curves.name, *report["artifacts"]["plots"]]
    report["artifacts"]["trials"] = "trials.csv"
    atomic_write_json(run_dir / "report.json", report)
    atomic_write_text(run_dir / "report.md", render_markdown(report, trials))
    print(summary_table(report, run_dir))
    return report


def _refit_config(s: SearchSettings, trial: dict) -> TrainConfig:
    # threads 0: the refit runs alone in the driver and may use every core (trials got --cpus-per-trial)
    return TrainConfig.from_dict(
        {**s.base, **trial["config"], "seed": s.seed, "max_epochs": trial["best_iteration"], "threads": 0}
    )


def _refit_ensemble(
    s: SearchSettings, data: PreparedData, members: list[dict], weights, cache, report: dict, outputs: dict
) -> None:
    """Refit the other top trials too (``--ensemble N``); the test metrics become those of the mean of the
    members' class probabilities. The single best model's metrics stay under ``metrics.test_single``; each
    member's run folder (with its model.pt) is ``ensemble/member-<rank>/``."""
    import torch

    from tuning.report import classification_metrics

    probs = [outputs["probs_all"]]
    for rank, trial in enumerate(members[1:], start=2):
        print(
            f"ensemble member {rank} of {len(members)}: trial {trial['trial_id']}, {trial['best_iteration']} epochs"
        )
        out: dict = {}
        run_training(
            _refit_config(s, trial),
            data,
            Path(s.run_dir) / "ensemble" / f"member-{rank}",
            command=s.command,
            kind="ensemble-member",
            progress=False,
            backbone_state=weights,
            cache=cache,
            test_outputs=out,
        )
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
    from tuning.report import plot_confusion, plot_roc, plot_roc_ovr

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


def _search_block(s: SearchSettings, trials: list[dict], seconds: float, *, images_per_epoch: int) -> dict:
    statuses = [t["status"] for t in trials]
    rates = sorted(images_per_epoch * t["iterations"] / t["time_s"] for t in trials if t["time_s"] > 0)
    return {
        "space": s.space,
        "space_spec": effective_spec(s),
        "scheduler": {
            "name": "ASHA",
            "time_attr": "training_iteration (epochs)",
            "max_t": s.max_epochs,
            "grace_period": s.grace_period,
            "reduction_factor": s.reduction_factor,
        },
        "metric": s.metric,
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
    }
