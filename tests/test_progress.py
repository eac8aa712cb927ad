"""The search's progress lines: one per trial event, with the sampled values, the counts and what is left."""

from types import SimpleNamespace

from tuning.progress import TrialEvents


def trial(trial_id: str, config: dict, last_epoch: int = 0):
    return SimpleNamespace(trial_id=trial_id, config=config, last_result={"training_iteration": last_epoch})


def test_one_line_per_event_with_sampled_values_counts_and_asha_stops():
    lines = []
    events = TrialEvents(
        total=2, sampled=["lr", "dropout"], metric="val_loss", mode="min", max_epochs=4, write=lines.append
    )
    a = trial("a_00000", {"lr": 0.00123456, "dropout": 0.25, "model": "resnet50"})
    b = trial("a_00001", {"lr": 0.01, "dropout": 0.5, "model": "resnet50"})
    events.on_trial_start(0, [], a)
    events.on_trial_start(0, [], b)
    for epoch, loss in ((1, 0.7), (2, 0.5), (3, 0.6)):
        events.on_trial_result(0, [], a, {"val_loss": loss, "training_iteration": epoch})
    events.on_trial_result(0, [], b, {"val_loss": 0.9, "training_iteration": 1})
    b.last_result = {"training_iteration": 2}
    events.on_trial_complete(0, [], b)
    a.last_result = {"training_iteration": 4}
    events.on_trial_complete(0, [], a)

    assert len(lines) == 8
    assert "trial a_00000 started: dropout=0.25, lr=0.00123" in lines[0] and "model" not in lines[0]
    assert "epoch 3/4: val_loss 0.6000 (its best 0.5000)" in lines[4]
    assert "trial a_00001 stopped early by ASHA after 2 epoch(s); its best val_loss 0.9000" in lines[6]
    assert "1/2 trials done, best so far 0.5000, about" in lines[6] and "s left" in lines[6]
    assert "trial a_00000 finished after 4 epoch(s)" in lines[7] and "2/2 trials done" in lines[7]
    assert "left" not in lines[7]


def test_a_failed_trial_counts_as_done_and_says_so():
    lines = []
    events = TrialEvents(
        total=3, sampled=[], metric="val_auroc", mode="max", max_epochs=2, write=lines.append
    )
    t = trial("b_00000", {"lr": 0.1})
    events.on_trial_start(0, [], t)
    events.on_trial_result(0, [], t, {"val_auroc": float("nan"), "training_iteration": 1})  # not a value
    events.on_trial_error(0, [], t)
    assert lines[0].endswith("started: the fixed config")
    assert len(lines) == 2 and "FAILED" in lines[1] and "1/3 trials done" in lines[1]


def test_the_callback_pickles_while_print_is_patched(monkeypatch, capsys):
    # Tune pickles its callbacks with the experiment state; some runtimes replace builtins.print
    import builtins
    import pickle

    monkeypatch.setattr(builtins, "print", lambda *a, **k: None)
    events = TrialEvents(total=1, sampled=["lr"], metric="val_loss", mode="min", max_epochs=1)
    restored = pickle.loads(pickle.dumps(events))
    monkeypatch.undo()
    restored.on_trial_start(0, [], trial("c_00000", {"lr": 0.5}))
    assert "trial c_00000 started: lr=0.5" in capsys.readouterr().out
