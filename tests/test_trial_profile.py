"""The per-epoch profile of a cached trial (benchmarks/trial_profile.py)."""

import pytest

from benchmarks import trial_profile as tp


def test_the_table_splits_each_epoch_into_its_parts_and_the_rest():
    durations = {
        tp.EPOCH: [2.0, 2.0],
        tp.FORWARD: [0.5, 0.5],
        tp.BACKWARD: [1.0, 1.0],
        tp.STEP: [1.8, 1.8],  # forward + backward + an update of 0.3 s
        tp.TRAIN_NEXT: [0.05, 0.05],
        tp.VAL_STEP: [0.1, 0.1],
        tp.VAL_NEXT: [0.01, 0.01],
        "[Callback]StagedFineTuning.on_train_epoch_start": [0.02, 0.02],
    }
    lines = tp.table(durations, fit_s=4.5, loop_s=4.0, epochs=2)
    rows = {line.split(" | ")[0].lstrip("| "): line for line in lines[2:]}
    assert "| 0.500 | 25% |" in rows["forward (training_step)"]
    assert "| 0.300 | 15% |" in rows["optimiser update (AdamW, fused)"]
    assert "| 0.020 | 1% |" in rows["callbacks' hooks (staging, reports)"]
    # 2.0 - (0.5 + 1.0 + 0.3 + 0.05 + 0.1 + 0.01 + 0.02) = 0.02 per epoch left to Lightning's loops
    assert "| 0.020 | 1% |" in rows["the rest: Lightning's loops, logging, metrics"]
    assert "| 2.000 | 100% |" in rows["whole epoch (run_training_epoch, validation included)"]


@pytest.mark.slow
def test_the_profile_runs_a_cached_trial_on_the_phantom(capsys):
    assert (
        tp.main(["--image-size", "32", "--max-epochs", "2", "--stage2-epoch", "1", "--loop-epochs", "1"]) == 0
    )
    out = capsys.readouterr().out
    assert "| forward (training_step) |" in out and "trial: 9 blocks unfrozen from epoch 1 of 2, 32 px" in out
    ratio = float(out.strip().splitlines()[-1].split("=")[1])
    assert ratio > 0
