"""A search from start to end: the data, the backbone and its cache once, then one search on one split (or a
cross-validation, ``tuning.cv``), the refit and the report. ``run_search`` is what ``python -m tuning.search``
calls."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from modules.files import atomic_write_json, atomic_write_text
from tuning.backbone import build_cache, search_weights, with_batch_norm_statistics
from tuning.cli import warn
from tuning.cv import run_cv
from tuning.ray_runtime import share_cache
from tuning.repeats_report import write_repeats_report
from tuning.settings import SearchSettings
from tuning.settings_io import save_settings
from tuning.split_search import search_split
from tuning.tracking import log_result, prepare_tracking

LEAKY_WARNING = (
    "--split random: files are split one by one, so duplicates of one scan can sit in train and test. This "
    "result is LEAKY and inflated; it exists only to show by how much. Publish the grouped result"
)


def check_gpus(s: SearchSettings) -> None:
    """A local search cannot ask for more GPUs per trial than this machine has (a cluster may have them)."""
    if s.address:
        return
    import torch

    gpus = torch.cuda.device_count()
    if s.gpus_per_trial > gpus:
        raise ValueError(
            f"--gpus-per-trial {s.gpus_per_trial} but this machine has {gpus} GPU(s); "
            "lower it, or join a cluster with GPUs through --address"
        )


def run_search(s: SearchSettings, *, resume: bool = False) -> dict | None:
    """Run (or ``resume``) the search ``s`` into ``s.run_dir``; returns its report, None when every trial failed.
    ``s.repeats`` > 1: one cross-validation per split seed, each in ``repeat-<seed>/``, then their summary."""
    check_gpus(s)
    for message in s.warnings():
        warn(message)
    prepare_tracking(s)  # a bad --mlflow store is one error line, before the data or Ray
    if s.repeats == 1:
        return _run_one(s, resume=resume)
    run_dir = Path(s.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        atomic_write_json(run_dir / "search.json", save_settings(s, None))
    reports = []
    for seed in s.split_seeds:
        sub = repeat_settings(s, seed)
        print(f"\n##### repeat: split seed {seed} ({s.split_seeds.index(seed) + 1} of {s.repeats})")
        report = _run_one(sub, resume=resume and (Path(sub.run_dir) / "search.json").is_file())
        if report is None:
            return None
        reports.append(report)
    report = write_repeats_report(s, reports)
    log_result(s, report, run_dir, kind="repeats")
    return report


def repeat_settings(s: SearchSettings, seed: int) -> SearchSettings:
    """The settings of one repeat: its split seed, its folder ``repeat-<seed>/`` (and storage)."""
    return dataclasses.replace(
        s,
        split_seed=seed,
        repeats=1,
        run_dir=str(Path(s.run_dir) / f"repeat-{seed}"),
        storage=f"{s.storage.rstrip('/')}/repeat-{seed}" if s.storage else None,
    )


def _run_one(s: SearchSettings, *, resume: bool) -> dict | None:
    run_dir = Path(s.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    data = s.prepared(warn=warn, split=s.split)
    if data.leaky:
        warn(LEAKY_WARNING)
    if s.final:
        data = data.without_test()
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
        atomic_write_json(saved, save_settings(s, data.images.fingerprint))
    spec = s.spec()
    weights = search_weights(spec, s)
    if s.cv:
        return run_cv(s, data, spec, weights, resume=resume)
    weights = with_batch_norm_statistics(s, spec, data, weights)
    atomic_write_text(run_dir / "split.csv", data.split_csv())
    print(
        f"data: {data.images.source}{' (SYNTHETIC phantom set)' if data.synthetic else ''}: "
        f"{len(data.images.records)} images {data.images.class_counts()}, "
        f"split {', '.join(f'{k} {data.splits.count(k)}' for k in ('train', 'val', 'test'))}"
        f"{' (LEAKY random split)' if data.leaky else ''}"
    )
    cache = share_cache(s, build_cache(s, spec, data, weights))
    return search_split(s, data, spec, weights, cache, resume=resume)
