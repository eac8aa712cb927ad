"""One search on one split: Ray Tune with ASHA on the train/val images, then the refit of the best config and
its one test. A single-split search runs it once; a cross-validation once per fold."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from modules.dataset import PreparedData
from modules.weights import WeightsState
from tuning.ray_runtime import StoredCache, start_ray
from tuning.refit import refit_and_report
from tuning.settings import SearchSettings
from tuning.tracking import log_result
from tuning.tuner import count_unfinished, make_tuner


def search_split(
    s: SearchSettings,
    data: PreparedData,
    spec: dict,
    weights: WeightsState | None,
    cache: StoredCache | None,
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
        grid = make_tuner(s, spec, data, weights, cache, resume=resume).fit()
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
    report = refit_and_report(
        s,
        data,
        grid,
        weights,
        search_seconds=search_seconds,
        cache=cache.local if cache is not None else None,
        test_outputs=test_outputs,
    )
    if report is not None:
        log_result(s, report, Path(s.run_dir), kind="refit")
    return report
