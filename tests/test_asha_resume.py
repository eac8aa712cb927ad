"""ASHA's decisions survive ``--resume``: Ray's ``Tuner.restore`` hands back the scheduler with empty rungs
(ray-project/ray issue 30838); ``tuning.asha.ResumableASHA`` rebuilds them from the finished trials' results.

Quick: the scheduler alone, fed fake trial results (no training), interrupted after three trials and restored
the way Tune restores it. Then a real search (a tiny CNN, one trial at a time) interrupted with SIGINT after
its second trial, resumed, and compared with the same search run without an interrupt.
"""

from __future__ import annotations

import json
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.fs
import pytest
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from tests.helpers import TINY_SEARCH, search_settings
from tuning import asha
from tuning.asha import ResumableASHA
from tuning.tuner import collect_trials, count_unfinished, make_scheduler, make_tuner

MAX_T, GRACE, RF = 4, 1, 2  # rungs at epochs 1, 2 and 4
# validation loss per epoch of six trials that run one after the other
CURVES = [
    [0.70, 0.60, 0.50, 0.40],
    [0.65, 0.55, 0.45, 0.35],
    [0.90, 0.85, 0.80, 0.75],
    [0.60, 0.58, 0.56, 0.54],
    [0.80, 0.70, 0.66, 0.64],
    [0.68, 0.50, 0.30, 0.20],
]


@dataclass
class Storage:
    trial_fs_path: str
    storage_filesystem: pyarrow.fs.FileSystem = field(default_factory=pyarrow.fs.LocalFileSystem)


@dataclass(eq=False)
class FakeTrial:
    """What the scheduler reads of a trial: its id, its status and where its results are stored."""

    trial_id: str
    storage: Storage
    status: str = Trial.PENDING


def scheduler(kind=ResumableASHA):
    return kind(
        time_attr="training_iteration", metric="val_loss", mode="min", max_t=MAX_T, grace_period=GRACE,
        reduction_factor=RF,
    )  # fmt: skip


def run_trial(sched, trial: FakeTrial, curve: list[float]) -> int:
    """Feed one trial's results as Tune does (each epoch until STOP, then its completion); the epochs it ran.
    Its results are logged to its result.json as Tune's JSON logger writes them."""
    sched.on_trial_add(None, trial)
    log = Path(trial.storage.trial_fs_path) / "result.json"
    log.parent.mkdir(parents=True, exist_ok=True)
    result: dict = {}
    for epoch, loss in enumerate(curve, start=1):
        result = {"training_iteration": epoch, "val_loss": loss}
        with log.open("a") as fh:
            fh.write(json.dumps(result) + "\n")
        if sched.on_trial_result(None, trial, result) == TrialScheduler.STOP:
            break
    sched.on_trial_complete(None, trial, result)
    trial.status = Trial.TERMINATED
    return result["training_iteration"]


def trials(root: Path) -> list[FakeTrial]:
    return [FakeTrial(f"t{i}", Storage(str(root / f"t{i}"))) for i in range(len(CURVES))]


def uninterrupted(root: Path) -> tuple[list[int], dict]:
    sched = scheduler()
    epochs = [run_trial(sched, t, c) for t, c in zip(trials(root), CURVES, strict=True)]
    return epochs, sched.rung_records()


def interrupted_after(k: int, root: Path, kind) -> tuple[list[int], dict]:
    """The first ``k`` trials run, then the search stops; a new scheduler (as ``Tuner.restore`` builds it) is
    handed the finished trials, then runs the others."""
    first, later = scheduler(), scheduler(kind)
    ts = trials(root)
    epochs = [run_trial(first, t, c) for t, c in zip(ts[:k], CURVES[:k], strict=True)]
    for t in ts[:k]:  # Tune re-adds every restored trial; the finished ones arrive TERMINATED
        later.on_trial_add(None, t)
    epochs += [run_trial(later, t, c) for t, c in zip(ts[k:], CURVES[k:], strict=True)]
    return epochs, ResumableASHA.rung_records(later)  # (it reads what Ray's own scheduler keeps too)


def test_the_search_without_an_interrupt_stops_trials_at_its_rungs(tmp_path):
    epochs, records = uninterrupted(tmp_path)
    assert epochs == [4, 4, 1, 2, 1, 4]  # trial 2 stops at rung 1, trial 3 at rung 2, trial 4 at rung 1
    assert sorted(records) == [1, 2, 4]
    assert records[1] == {f"t{i}": CURVES[i][0] for i in range(6)}


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_a_restored_scheduler_makes_the_same_decisions(tmp_path, k):
    expected = uninterrupted(tmp_path / "whole")
    assert interrupted_after(k, tmp_path / "resumed", ResumableASHA) == expected


def test_ray_s_own_scheduler_forgets_its_rungs_on_restore(tmp_path):
    """The control: Ray's ASHAScheduler, restored the same way, lets through trials the search would stop."""
    epochs, records = interrupted_after(3, tmp_path, ASHAScheduler)
    assert epochs != uninterrupted(tmp_path / "whole")[0]
    assert epochs[3] == 4  # trial 3 met empty rungs and ran to the end


def test_an_unfinished_trial_is_not_replayed(tmp_path):
    """A trial that was running is run again from epoch 0 on resume: replaying its partial results would mark
    its rungs as passed, and ASHA would never stop it."""
    sched = scheduler()
    ts = trials(tmp_path)
    for t, c in zip(ts[:3], CURVES[:3], strict=True):
        run_trial(scheduler(), t, c)
    ts[2].status = Trial.RUNNING  # saved while it ran
    for t in ts[:3]:
        sched.on_trial_add(None, t)
    assert set(sched.rung_records()[1]) == {"t0", "t1"}


def test_a_missing_result_file_is_a_warning_not_a_failure(tmp_path, capsys):
    sched = scheduler()
    sched.on_trial_add(None, FakeTrial("gone", Storage(str(tmp_path / "gone")), status=Trial.TERMINATED))
    assert sched.rung_records()[1] == {}
    assert "cannot rebuild the rung records of finished trial gone" in capsys.readouterr().err


def test_a_result_line_cut_short_is_skipped():
    assert list(asha.parse_results(['{"a": 1}', '{"a": 2', ""])) == [{"a": 1}]


def test_the_search_builds_the_resumable_scheduler():
    s = search_settings(
        "--space", "baseline_cnn", "--max-epochs", "4", "--grace-period", "1", "--no-dashboard"
    )
    assert isinstance(make_scheduler(s), ResumableASHA)


# ----------------------------------------------------------------------------- a real search, interrupted
SPACE = {
    "model": "cnn",
    "crop": "none",
    "cnn_depth": 2,
    "cnn_width": 8,
    "lr": {"loguniform": [1e-4, 3e-1]},  # wide: some trials learn, some do not, and ASHA stops those
    "dropout": {"uniform": [0.0, 0.5]},
}
SAMPLES = 6


def run_search(settings, data, *, resume: bool) -> tuple[list[dict], int]:
    """(the trials in the order they were created, how many are unfinished)."""
    handler = signal.getsignal(signal.SIGINT)
    try:  # Ray Tune replaces the SIGINT handler while it runs (and resets it to the default on a SIGINT)
        grid = make_tuner(settings, settings.spec(), data, None, None, resume=resume).fit()
    finally:
        signal.signal(signal.SIGINT, handler)
    metric, mode = settings.rank
    trials = collect_trials(grid, metric=metric, mode=mode)
    # BasicVariantGenerator numbers its trials <experiment>_<index>: the index is their order
    ordered = sorted(trials, key=lambda t: int(t["trial_id"].rsplit("_", 1)[1]))
    return ordered, count_unfinished(grid, settings)


def settings_for(space: Path, data: Path, run: Path):
    return search_settings(
        "--space", str(space), "--data", str(data), "--num-samples", str(SAMPLES), "--max-epochs", str(MAX_T),
        "--grace-period", str(GRACE), "--reduction-factor", str(RF), "--max-concurrent", "1", "--out", str(run),
        *TINY_SEARCH,
    )  # fmt: skip


def test_an_interrupted_then_resumed_search_stops_the_same_trials_at_the_same_rungs(
    ray_local, search_phantom, tmp_path, monkeypatch
):
    space = tmp_path / "space.json"
    space.write_text(json.dumps(SPACE))
    whole_settings = settings_for(space, search_phantom, tmp_path / "whole")
    data = whole_settings.prepared()
    whole, unfinished = run_search(whole_settings, data, resume=False)
    assert len(whole) == SAMPLES and unfinished == 0
    stopped = [i for i, t in enumerate(whole) if t["iterations"] < MAX_T]
    assert any(i >= 2 for i in stopped), f"ASHA stopped no trial after the interrupt point: {whole}"

    # the same search, interrupted by Ctrl+C once its second trial is complete
    completed = []
    real_complete = ResumableASHA.on_trial_complete

    def complete_then_interrupt(self, controller, trial, result):
        real_complete(self, controller, trial, result)
        completed.append(trial.trial_id)
        if len(completed) == 2:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(ResumableASHA, "on_trial_complete", complete_then_interrupt)
    resumed_settings = settings_for(space, search_phantom, tmp_path / "resumed")
    _, unfinished = run_search(resumed_settings, data, resume=False)
    monkeypatch.undo()
    assert len(completed) == 2 and unfinished == SAMPLES - 2

    resumed, unfinished = run_search(resumed_settings, data, resume=True)
    assert unfinished == 0
    assert [t["config"] for t in resumed] == [t["config"] for t in whole]
    assert [t["iterations"] for t in resumed] == [t["iterations"] for t in whole]
