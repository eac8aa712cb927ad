"""Search spaces and the checks made before Ray starts (no Ray cluster needed)."""

import json
from types import SimpleNamespace

import pytest
from ray.tune.schedulers import TrialScheduler

from search_spaces import SPACES, SpaceError, get_spec, to_tune
from tests.helpers import search_settings
from tuning.config import TrainConfig
from tuning.pipeline import check_gpus
from tuning.settings import SearchSettings
from tuning.tuner import make_scheduler


@pytest.mark.parametrize("name", sorted(SPACES))
def test_every_space_samples_valid_configs(name):
    space = to_tune(get_spec(name))
    for _ in range(25):
        config = {k: (v.sample() if hasattr(v, "sample") else v) for k, v in space.items()}
        cfg = TrainConfig.from_dict({**config, "max_epochs": 8})
        assert cfg.model in ("cnn", "resnet50")
        assert 1 <= cfg.unfreeze_depth <= 4 and cfg.lr > 0 and 0 <= cfg.dropout < 1
    assert SearchSettings(space=name, max_epochs=8, grace_period=4).spec() == get_spec(name)


def test_resnet_stage2_covers_the_required_hyperparameters():
    spec = get_spec("resnet_stage2")
    for key in ("lr", "backbone_lr", "dropout", "weight_decay", "unfreeze_depth", "stage2_epoch"):
        assert isinstance(spec[key], dict), f"{key} is not searched"


def test_resnet_stage2_blocks_is_resnet_stage2_unfreezing_by_block():
    stages, blocks = get_spec("resnet_stage2"), get_spec("resnet_stage2_blocks")
    assert blocks.pop("unfreeze_blocks") == {"choice": [1, 2, 3, 5, 7, 9]}
    del stages["unfreeze_depth"]
    assert blocks == stages


def test_unknown_space_lists_the_valid_ones():
    with pytest.raises(SpaceError, match="valid spaces: baseline_cnn, resnet_stage1, resnet_stage2"):
        get_spec("resnet_stage3")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"num_samples": 0}, "--num-samples must be >= 1"),
        ({"max_epochs": -1}, "--max-epochs must be >= 1"),
        ({"grace_period": 9, "max_epochs": 8}, "--grace-period must be within"),
        ({"reduction_factor": 1}, "--reduction-factor"),
        ({"cpus_per_trial": 0}, "--cpus-per-trial > 0"),
        ({"grace_period": 2}, "ASHA's first rung"),
    ],
)
def test_bad_settings_refused_before_ray(settings, message):
    with pytest.raises(ValueError, match=message):
        SearchSettings(**{"space": "resnet_stage2", "max_epochs": 8, "grace_period": 4, **settings})


def test_more_gpus_than_exist_refused(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(ValueError, match="has 0 GPU"):
        check_gpus(SearchSettings(gpus_per_trial=0.5))
    check_gpus(
        SearchSettings(gpus_per_trial=0.5, address="auto")
    )  # a cluster may have them: not checked here


def test_early_rung_can_be_allowed_with_a_warning():
    s = SearchSettings(space="resnet_stage2", grace_period=2, allow_early_rung=True)
    assert any("first rung" in w for w in s.warnings())
    assert not SearchSettings(space="resnet_stage2", grace_period=4).warnings()


def _space_file(tmp_path, content) -> str:
    p = tmp_path / "space.json"
    p.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(p)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"lr": {"loguniform": [1e-4, 1e-2]}', "invalid JSON at line 1"),
        ({"lr": {"uniform": [0.1, 0.01]}}, "low < high"),
        ({"lr": {"loguniform": [0, 0.1]}}, "bounds > 0"),
        ({"lr": {"normal": [0, 1]}}, "unknown sampler"),
        ({"learning_rate": 0.1}, "unknown hyperparameter"),
        ({"unfreeze_depth": {"uniform": [1, 3]}}, "integer; use randint or choice"),
        ({"unfreeze_depth": {"choice": [1, 7]}}, "unfreeze_depth must be"),
        ({"dropout": {"uniform": [0.2, 1.5]}}, "dropout"),
        ([1, 2], "expected a JSON object"),
    ],
)
def test_bad_space_files(tmp_path, content, message):
    with pytest.raises(ValueError, match=message):
        SearchSettings(space=_space_file(tmp_path, content), max_epochs=8, grace_period=4)


def test_good_space_file(tmp_path):
    path = _space_file(
        tmp_path, {"model": "cnn", "lr": {"loguniform": [1e-4, 1e-2]}, "cnn_depth": {"choice": [2, 3]}}
    )
    spec = SearchSettings(space=path, max_epochs=4, grace_period=1).spec()
    assert spec["model"] == "cnn"


def test_asha_stops_the_worse_trials_at_the_first_rung():
    s = SearchSettings(space="baseline_cnn", max_epochs=4, grace_period=1, reduction_factor=2)
    sched = make_scheduler(s)
    sched.set_search_properties("val_loss", "min")
    trials = [SimpleNamespace(trial_id=f"t{i}", status="PENDING") for i in range(4)]  # new trials
    for t in trials:
        sched.on_trial_add(None, t)
    actions = {}
    for t, loss in zip(trials, [0.5, 0.4, 0.9, 0.1], strict=True):
        actions[t.trial_id] = sched.on_trial_result(None, t, {"training_iteration": 1, "val_loss": loss})
    assert actions["t2"] == TrialScheduler.STOP  # worse than the better half at rung 1
    assert actions["t3"] == TrialScheduler.CONTINUE  # the best so far
    assert (
        sched.on_trial_result(None, trials[3], {"training_iteration": 4, "val_loss": 0.1})
        == TrialScheduler.STOP
    )


def test_set_replaces_a_constant_of_the_space_but_never_a_sampled_entry():
    assert search_settings("--space", "resnet_stage2").spec()["crop"] == "brain"  # the space's default
    s = search_settings("--space", "resnet_stage2", "--set", "crop=none", "--set", "lr=0.1")
    spec = s.spec()
    assert "crop" not in spec and s.base["crop"] == "none"  # --set wins over a constant
    assert spec["lr"] == {"loguniform": [3e-4, 3e-3]}  # a sampled entry stays sampled
    assert "the space samples ['lr']; the command-line values for them are ignored" in s.warnings()
