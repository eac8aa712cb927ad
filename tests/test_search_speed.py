"""benchmarks/search_speed.py: the compute bound it prints next to the measured speed-up."""

import argparse

import pytest

from benchmarks.search_speed import compute_seconds, step_rates, trial_epochs
from tuning.engine import TrainConfig

RATES = {
    "plain/stage1": 10.0,
    "plain/eval": 20.0,
    "plain/stage2/1": 5.0,
    "plain/stage2/2": 4.0,
    "cached/stage1": 1000.0,
    "cached/eval1": 2000.0,
    "cached/stage2/1": 10.0,
    "cached/stage2/2": 5.0,
    "cached/eval/1": 40.0,
    "cached/eval/2": 20.0,
}


def test_compute_seconds_weights_each_epoch_by_its_stage_and_depth():
    trials = [
        {"epochs": 4, "stage2_epoch": 2, "depth": 1},  # 2 stage-1 epochs, 2 stage-2 epochs at depth 1
        {"epochs": 3, "stage2_epoch": 5, "depth": 2},  # stopped before stage 2: depth plays no part
    ]
    plain = compute_seconds(trials, RATES, n_train=100, n_val=20, cached=False)
    cached = compute_seconds(trials, RATES, n_train=100, n_val=20, cached=True)
    assert plain == pytest.approx(2 * (10 + 1) + 2 * (20 + 1) + 3 * (10 + 1))
    assert cached == pytest.approx(2 * (0.1 + 0.01) + 2 * (10 + 0.5) + 3 * (0.1 + 0.01))
    deeper = [{"epochs": 4, "stage2_epoch": 2, "depth": 2}]
    assert compute_seconds(deeper, RATES, n_train=100, n_val=20, cached=True) == pytest.approx(
        2 * (0.1 + 0.01) + 2 * (20 + 1)
    )


def test_trial_epochs_reads_a_search_with_and_without_stage_columns(tmp_path):
    (tmp_path / "trials.csv").write_text(
        "trial_id,status,iterations,time_s,stage2_epoch,unfreeze_depth\n"
        "a,TERMINATED,6,60.5,3,2\n"
        "b,TERMINATED,4,30,2.0,1.0\n"
        "c,ERROR,,,3,1\n"  # never reported an epoch
    )
    assert trial_epochs(tmp_path) == [
        {"epochs": 6, "stage2_epoch": 3, "depth": 2, "time_s": 60.5},
        {"epochs": 4, "stage2_epoch": 2, "depth": 1, "time_s": 30.0},
    ]
    (tmp_path / "trials.csv").write_text("trial_id,status,iterations,lr\na,TERMINATED,7,0.001\n")
    defaults = TrainConfig()  # a space that names neither entry runs the defaults
    assert trial_epochs(tmp_path) == [
        {"epochs": 7, "stage2_epoch": defaults.stage2_epoch, "depth": defaults.unfreeze_depth, "time_s": 0.0}
    ]


def test_step_rates_times_every_kind_of_step():
    args = argparse.Namespace(
        cpus_per_trial=1, gpus_per_trial=0, image_size=32, loop_steps=1, precision="32-true"
    )
    rates = step_rates(args, [1, 2], batch=2)
    expected = {"plain/stage1", "plain/eval", "cached/stage1", "cached/eval1"}
    expected |= {f"{k}/{d}" for d in (1, 2) for k in ("plain/stage2", "cached/stage2", "cached/eval")}
    assert set(rates) == expected
    assert all(v > 0 for v in rates.values())


def test_the_tight_loops_run_at_the_precision_the_trials_resolve(monkeypatch):
    from benchmarks import search_speed
    from tuning import engine

    args = argparse.Namespace(gpus_per_trial=0, precision="auto")
    for native, expected in ((True, "bf16-mixed"), (False, "32-true")):
        monkeypatch.setattr(engine, "cpu_has_native_bf16", lambda native=native: native)
        assert search_speed._precision(args) == expected
    args.precision = "32-true"
    assert search_speed._precision(args) == "32-true"
