"""A search's progress for a person: one line per trial event, instead of Ray Tune's status tables.

Ray Tune's console output (its tables, ``RunConfig(verbose=1)``) redraws every trial's row on each update:
about 200 lines for four trials. What a person watching wants is the events: a trial started (with what it
sampled), an epoch result, a trial stopped early by ASHA, finished or failed, and how far the search is. Ray's
``tune.Callback`` hooks see each of those events; this callback prints them, and ``verbose=0`` silences the
tables (``--verbose`` brings them back and drops these lines). Ray has no reporter of its own that prints events
rather than tables, hence this one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from ray import tune


def _value(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


class TrialEvents(tune.Callback):
    """Print ``[elapsed] trial <id> <event> ...`` lines and the count of trials done out of ``total``.

    ``sampled``: the config keys to show (those the space samples); ``metric``/``mode``: the ranking metric;
    ``max_epochs``: a trial that completes with fewer epochs was stopped early by the scheduler (ASHA)."""

    def __init__(
        self,
        *,
        total: int,
        sampled: list[str],
        metric: str,
        mode: str,
        max_epochs: int,
        concurrency: int = 1,
        write: Callable[[str], None] | None = None,
    ) -> None:
        self.total, self.sampled, self.metric, self.mode = total, sorted(sampled), metric, mode
        # None: print. Not stored as ``print`` itself: Tune pickles its callbacks with the experiment, and a
        # patched builtins.print (as test runners and notebooks install) is not the object pickle can name
        self.max_epochs, self.concurrency, self.write = max_epochs, max(1, concurrency), write
        self.started = time.monotonic()
        self.done = 0
        self.durations: list[float] = []
        self.trial_start: dict[str, float] = {}
        self.best: dict[str, float] = {}

    def _line(self, trial, text: str) -> None:
        (self.write or print)(f"[{time.monotonic() - self.started:6.0f} s] trial {trial.trial_id} {text}")

    def _better(self, value: float, best: float | None) -> bool:
        return best is None or (value < best if self.mode == "min" else value > best)

    def on_trial_start(self, iteration, trials, trial, **info):
        self.trial_start[trial.trial_id] = time.monotonic()
        config = ", ".join(f"{k}={_value(trial.config.get(k))}" for k in self.sampled if k in trial.config)
        self._line(trial, f"started: {config or 'the fixed config'}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        value = result.get(self.metric)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return
        if self._better(value, self.best.get(trial.trial_id)):
            self.best[trial.trial_id] = value
        epoch = result.get("training_iteration", "?")
        best = self.best[trial.trial_id]
        self._line(trial, f"epoch {epoch}/{self.max_epochs}: {self.metric} {value:.4f} (its best {best:.4f})")

    def on_trial_complete(self, iteration, trials, trial, **info):
        epochs = (trial.last_result or {}).get("training_iteration", 0)
        how = "stopped early by ASHA" if epochs < self.max_epochs else "finished"
        self._finish(trial, f"{how} after {epochs} epoch(s)")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._finish(trial, "FAILED (its error is in the trials table and Ray's log)")

    def _finish(self, trial, text: str) -> None:
        self.done += 1
        if trial.trial_id in self.trial_start:
            self.durations.append(time.monotonic() - self.trial_start.pop(trial.trial_id))
        best = self.best.get(trial.trial_id)
        own = "" if best is None else f"; its best {self.metric} {best:.4f}"
        overall = list(self.best.values())
        so_far = "" if not overall else f", best so far {(min if self.mode == 'min' else max)(overall):.4f}"
        self._line(trial, f"{text}{own} | {self.done}/{self.total} trials done{so_far}{self._eta()}")

    def _eta(self) -> str:
        """``, about N s left``: the mean trial time so far times the trials left, over the trials run at once."""
        left = self.total - self.done
        if not self.durations or left <= 0:
            return ""
        mean = sum(self.durations) / len(self.durations)
        return f", about {mean * math.ceil(left / self.concurrency):.0f} s left"
