"""Progress of long work outside Ray's trials (the feature cache, scoring a large set) as a few plain lines.

``ProgressLines(label)`` is called with (done, total) as the work goes and prints at most one line every
``every_s`` seconds, and one at the end: how much is done, the time so far and an estimate of what is left
(linear in the work done). A line, not a progress bar: it reads the same in a log file, a CI job and a
terminal. tqdm would draw a bar; the project prints lines everywhere else, so it prints lines here too.
"""

from __future__ import annotations

import time
from collections.abc import Callable


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


class ProgressLines:
    """A (done, total) callback that prints ``<label>: done/total (pct), <elapsed>, about <left> left``."""

    def __init__(
        self,
        label: str,
        *,
        unit: str = "",
        every_s: float = 15.0,
        write: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.label, self.unit, self.every_s = label, unit, every_s
        self.write = write or (lambda line: print(line, flush=True))
        self.clock = clock
        self.started = clock()
        self.last = self.started

    def __call__(self, done: int, total: int) -> None:
        now = self.clock()
        finished = done >= total
        if not finished and now - self.last < self.every_s:
            return
        self.last = now
        elapsed = now - self.started
        pct = 100.0 * done / total if total else 100.0
        unit = f" {self.unit}" if self.unit else ""
        line = f"{self.label}: {done}/{total}{unit} ({pct:.0f}%), {_duration(elapsed)}"
        if finished:
            line += ", done"
        elif done > 0:
            line += f", about {_duration(elapsed * (total - done) / done)} left"
        self.write(line)
