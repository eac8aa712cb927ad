"""benchmarks/search_speed.py: the compute bound it prints next to the measured speed-up."""

import argparse

import pytest

from benchmarks.search_speed import compute_seconds, step_rates, trial_epochs
from tuning.config import TrainConfig

RATES = {
    "plain/stage1": 10.0,
    "plain/eval": 20.0,
    "plain/stage2/3": 5.0,  # keyed by the trainable blocks: 3 = unfreeze depth 1, 9 = depth 2
    "plain/stage2/9": 4.0,
    "cached/stage1": 1000.0,
    "cached/eval1": 2000.0,
    "cached/stage2/3": 10.0,
    "cached/stage2/9": 5.0,
    "cached/eval/3": 40.0,
    "cached/eval/9": 20.0,
}


def test_compute_seconds_weights_each_epoch_by_its_stage_and_depth():
    trials = [
        {"epochs": 4, "stage2_epoch": 2, "blocks": 3},  # 2 stage-1 epochs, 2 stage-2 epochs at depth 1
        {"epochs": 3, "stage2_epoch": 5, "blocks": 9},  # stopped before stage 2: depth plays no part
    ]
    plain = compute_seconds(trials, RATES, n_train=100, n_val=20, cached=False)
    cached = compute_seconds(trials, RATES, n_train=100, n_val=20, cached=True)
    assert plain == pytest.approx(2 * (10 + 1) + 2 * (20 + 1) + 3 * (10 + 1))
    assert cached == pytest.approx(2 * (0.1 + 0.01) + 2 * (10 + 0.5) + 3 * (0.1 + 0.01))
    deeper = [{"epochs": 4, "stage2_epoch": 2, "blocks": 9}]
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
        {"epochs": 6, "stage2_epoch": 3, "blocks": 9, "time_s": 60.5},
        {"epochs": 4, "stage2_epoch": 2, "blocks": 3, "time_s": 30.0},
    ]
    (tmp_path / "trials.csv").write_text(  # a space sampling blocks: unfreeze_blocks wins over the depth
        "trial_id,status,iterations,time_s,stage2_epoch,unfreeze_blocks\na,TERMINATED,5,20,2,7\n"
    )
    assert trial_epochs(tmp_path) == [{"epochs": 5, "stage2_epoch": 2, "blocks": 7, "time_s": 20.0}]
    (tmp_path / "trials.csv").write_text("trial_id,status,iterations,lr\na,TERMINATED,7,0.001\n")
    defaults = TrainConfig()  # a space that names neither entry runs the defaults
    assert trial_epochs(tmp_path) == [
        {
            "epochs": 7,
            "stage2_epoch": defaults.stage2_epoch,
            "blocks": defaults.trainable_blocks,
            "time_s": 0.0,
        }
    ]


def test_step_rates_times_every_kind_of_step():
    args = argparse.Namespace(
        cpus_per_trial=1, gpus_per_trial=0, image_size=32, loop_steps=1, precision="32-true"
    )
    rates = step_rates(args, [1, 3, 9], batch=2)
    expected = {"plain/stage1", "plain/eval", "cached/stage1", "cached/eval1"}
    expected |= {f"{k}/{b}" for b in (1, 3, 9) for k in ("plain/stage2", "cached/stage2", "cached/eval")}
    assert set(rates) == expected
    assert all(v > 0 for v in rates.values())


def test_the_tight_loops_run_at_the_precision_the_trials_resolve(monkeypatch):
    from benchmarks import search_speed
    from tuning import engine

    args = argparse.Namespace(gpus_per_trial=0, precision="auto")
    for native, expected in ((True, "bf16-mixed"), (False, "32-true")):
        monkeypatch.setattr(engine, "cpu_has_native_bf16", lambda native=native: native)
        assert search_speed.trial_precision(args) == expected
    args.precision = "32-true"
    assert search_speed.trial_precision(args) == "32-true"


def test_main_prints_the_table_the_compute_ratios_and_the_last_line(tmp_path, monkeypatch, capsys):
    """The whole report with the two searches and the tight loops stubbed: what a 20-minute run ends with."""
    from benchmarks import search_speed

    epochs = {"no-cache": ["8,3,2", "4,3,1"], "cache": ["4,3,2", "4,3,1"]}

    def fake_run(args, out, cached):
        out.mkdir(parents=True)
        rows = "".join(
            f"t{i},TERMINATED,{e.split(',')[0]},50,{e.split(',', 1)[1]}\n"
            for i, e in enumerate(epochs[out.name])
        )
        (out / "trials.csv").write_text(
            "trial_id,status,iterations,time_s,stage2_epoch,unfreeze_depth\n" + rows
        )
        (out / "split.csv").write_text("path,split\n" + "a,train\n" * 100 + "b,val\n" * 20 + "c,test\n" * 20)
        wall = 30.0 if cached else 120.0
        return {
            "search wall s": wall,
            "median trial s": wall / 2,
            "time to report s": wall + 10,
            "refit test acc %": 80.0,
        }

    monkeypatch.setattr(search_speed, "run_variant", fake_run)
    monkeypatch.setattr(search_speed, "step_rates", lambda args, depths: {**RATES})
    assert search_speed.main(["--keep", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    plain = compute_seconds(
        [{"epochs": 8, "stage2_epoch": 3, "blocks": 9}, {"epochs": 4, "stage2_epoch": 3, "blocks": 3}],
        RATES,
        n_train=100,
        n_val=20,
        cached=False,
    )
    assert f"plain {plain:.0f} s" in out and "epoch for epoch" in out
    assert out.strip().splitlines()[-1] == "search_speedup=4.00 test_accuracy_delta=+0.0"


def test_phantom_mode_runs_the_cached_search_alone_at_the_targets_settings(tmp_path, monkeypatch, capsys):
    """``--phantom``: the search-speed target's settings (64 px, 32 trials of 10 epochs, grace 10, random
    weights, the phantom set), the cached search only, ending with its wall time; explicit flags win."""
    from benchmarks import search_speed

    seen = []

    def fake_run(args, out, cached):
        seen.append((vars(args).copy(), cached))
        out.mkdir(parents=True)
        (out / "trials.csv").write_text(
            "trial_id,status,iterations,time_s,stage2_epoch,unfreeze_depth\nt0,TERMINATED,10,40,3,2\n"
        )
        (out / "split.csv").write_text("path,split\n" + "a,train\n" * 84 + "b,val\n" * 18)
        return {"search wall s": 150.0, "median trial s": 40.0, "time to report s": 170.0}

    monkeypatch.setattr(search_speed, "run_variant", fake_run)
    monkeypatch.setattr(search_speed, "step_rates", lambda args, depths: {**RATES})
    assert search_speed.main(["--phantom", "--keep", str(tmp_path / "a")]) == 0
    ((args, cached),) = seen
    assert cached and args["data"] is None and args["weights"] == "none"
    assert (args["image_size"], args["num_samples"], args["max_epochs"], args["grace_period"]) == (
        64,
        32,
        10,
        10,
    )
    out = capsys.readouterr().out
    assert "cached trials: 40 s in all" in out and out.strip().splitlines()[-1] == "search_wall_s=150.0"
    seen.clear()
    assert search_speed.main(["--phantom", "--num-samples", "4", "--keep", str(tmp_path / "b")]) == 0
    assert seen[0][0]["num_samples"] == 4 and seen[0][0]["max_epochs"] == 10
