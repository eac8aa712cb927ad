"""ASHA whose rung records survive ``--resume``.

Ray Tune saves a searcher's state with the experiment, but not the scheduler's: ``Tuner.restore`` hands back the
``ASHAScheduler`` as it was when the experiment started, with empty rungs (ray-project/ray issue 30838). The
trials that run after a resume then meet no recorded result at their rungs and are let through where the
uninterrupted search would have stopped them.

The records are a function of the finished trials' results, which Tune does save (every trial's
``result.json`` beside the experiment state). On restore, Tune adds each restored trial to the scheduler again
(``on_trial_add``), the finished ones already TERMINATED, a status a new trial never has; ``ResumableASHA``
replays such a trial's results through the rungs exactly as the live search fed them (every result, then the
last one as its completion), so its records are back before any new result arrives. Unfinished trials are not
replayed: they run again from epoch 0 (trials keep no checkpoints) and record their values anew.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from ray.air.constants import EXPR_RESULT_FILE
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler

from tuning.cli import warn


class ResumableASHA(ASHAScheduler):
    """``ASHAScheduler`` (one bracket) that rebuilds its rung records from the finished trials of a restored
    experiment."""

    def on_trial_add(self, tune_controller, trial: Trial) -> None:
        super().on_trial_add(tune_controller, trial)
        if trial.status == Trial.TERMINATED:  # only a restored, finished trial arrives finished
            self.replay(tune_controller, trial, trial_results(trial))

    def replay(self, tune_controller, trial, results: list[dict]) -> None:
        """Feed a finished trial's ``results`` (in order) through the rungs as the live search did: each result
        until ASHA stops the trial, then the last one as its completion."""
        last = None
        for last in results:
            if self.on_trial_result(tune_controller, trial, last) == self.STOP:
                break
        if last is not None:
            self.on_trial_complete(tune_controller, trial, last)

    def rung_records(self) -> dict[float, dict[str, float]]:
        """Milestone -> {trial id: the metric value recorded there}, in the metric's own sign (lowest rung
        first). Read from Ray's bracket, which keeps them in private attributes and offers no accessor."""
        sign = self._metric_op or 1.0
        return {
            milestone: {trial_id: sign * value for trial_id, value in recorded.items()}
            for bracket in self._brackets
            for milestone, recorded in reversed(bracket._rungs)
        }


def trial_results(trial: Trial) -> list[dict]:
    """Every result a trial reported, read from its ``result.json`` in the experiment's storage (a local
    folder or a cloud URI); empty, with a warning, when it cannot be read."""
    path = f"{trial.storage.trial_fs_path}/{EXPR_RESULT_FILE}"
    try:
        with trial.storage.storage_filesystem.open_input_stream(path) as fh:
            text = fh.readall().decode()
    except OSError as exc:
        warn(
            f"ASHA cannot rebuild the rung records of finished trial {trial.trial_id} ({exc}); later trials "
            "are compared without them"
        )
        return []
    return list(parse_results(text.splitlines()))


def parse_results(lines: Iterable[str]) -> Iterable[dict]:
    """The results of a ``result.json`` (one JSON object a line); a line cut short by a crash is skipped."""
    for line in lines:
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
            continue
