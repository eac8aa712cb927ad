"""``--search-alg``: the searcher alone, fed fake results (no training, no Ray cluster), and the settings that
cannot work refused before Ray starts."""

from __future__ import annotations

import json

import pytest
from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

from search_spaces import SpaceError, to_tune
from tests.helpers import search_settings
from tuning.search_alg import make_search_alg, search_alg_info

BASE = ["--space", "baseline_cnn", "--max-epochs", "4", "--grace-period", "2", "--no-dashboard"]


def tpe(*extra: str):
    return search_settings(*BASE, "--search-alg", "tpe", "--max-concurrent", "1", *extra)


def drive(s, n: int = 8) -> list[dict]:
    """Ask the searcher for ``n`` configs one at a time, telling it a made-up loss for each (lower with a
    larger learning rate): what Tune does with one trial at a time."""
    alg = make_search_alg(s)
    alg.set_search_properties("val_loss", "min", to_tune(s.spec()))
    configs = []
    for i in range(n):
        config = alg.suggest(f"t{i}")
        assert config is not None, "the concurrency limit refused a trial although none was running"
        configs.append(config)
        alg.on_trial_complete(f"t{i}", {"val_loss": 1.0 - config["lr"] * 100, "training_iteration": 1})
    return configs


def test_tpe_is_optuna_s_searcher_in_a_concurrency_limiter():
    alg = make_search_alg(tpe())
    assert isinstance(alg, ConcurrencyLimiter) and alg.max_concurrent == 1
    assert type(alg.searcher).__name__ == "OptunaSearch"
    assert isinstance(make_search_alg(search_settings(*BASE)), BasicVariantGenerator)


def test_tpe_is_seeded_by_the_search_seed():
    first, again = drive(tpe("--tpe-startup", "3")), drive(tpe("--tpe-startup", "3"))
    assert first == again
    assert drive(tpe("--tpe-startup", "3", "--seed", "1")) != first


def test_tpe_draws_inside_the_space_and_models_after_its_start_up_trials():
    configs = drive(tpe("--tpe-startup", "3"), n=12)
    for c in configs:
        assert 1e-4 <= c["lr"] <= 3e-3 and c["cnn_width"] in (16, 32) and c["cnn_depth"] in (3, 4)
        assert "model" not in c  # constants stay in the param space; only sampled entries are suggested
    # the made-up loss favours a large learning rate: after the random start TPE proposes larger ones
    start, modelled = configs[:3], configs[3:]
    assert sum(c["lr"] for c in modelled) / len(modelled) > sum(c["lr"] for c in start) / len(start)


def test_the_report_names_the_algorithm():
    info = search_alg_info(tpe("--tpe-startup", "4"))
    assert info["name"] == "tpe" and info["n_startup_trials"] == 4 and info["max_concurrent"] == 1
    assert "OptunaSearch" in info["implementation"] and info["seed"] == 0
    assert search_alg_info(search_settings(*BASE))["name"] == "random"


def test_tpe_needs_a_sampled_hyperparameter(tmp_path):
    space = tmp_path / "fixed.json"
    space.write_text(json.dumps({"model": "cnn", "lr": 0.001}))
    with pytest.raises(
        SpaceError, match="--search-alg tpe models sampled hyperparameters, and space .* samples none"
    ):
        search_settings(*BASE, "--space", str(space), "--search-alg", "tpe")
    search_settings(*BASE, "--space", str(space))  # a random search of a fixed config is allowed


def test_tpe_start_up_trials_must_be_positive():
    with pytest.raises(ValueError, match="--tpe-startup must be >= 1, got 0"):
        tpe("--tpe-startup", "0")


def test_a_budget_within_the_random_start_is_warned_about():
    warnings = tpe("--num-samples", "6").warnings()
    assert any("no trial is chosen by TPE" in w for w in warnings)
    assert not any("TPE" in w for w in tpe("--num-samples", "20").warnings())
