"""End-to-end searches on tiny phantom data, on a local Ray started once for this module."""

import csv
import json
from pathlib import Path

import pytest
import torch
from ray.tune import Checkpoint

from modules.weights import resolve_weights
from tests.helpers import TINY_SEARCH as TINY
from tests.helpers import search_settings
from tuning import search
from tuning.cli import run_main
from tuning.trainable import BEST_WEIGHTS


def _run(args) -> int:
    return run_main(search.main, args)


def _check_run_folder(run):
    report = json.loads((run / "report.json").read_text())
    assert report["kind"] == "search"
    test = report["metrics"]["test"]
    assert test["accuracy_ci95"][0] <= test["accuracy"] <= test["accuracy_ci95"][1]
    assert "majority_baseline" in test and test["n"] > 0
    for name in (
        "report.md",
        "report.html",
        "trials.csv",
        "split.csv",
        "model.pt",
        "trial_curves.png",
        "loss_curves.png",
        "confusion_matrix.png",
        "search.json",
    ):
        assert (run / name).is_file(), name
    # each trial's time split: the seconds inside training and validation batches, within its total
    for row in csv.DictReader((run / "trials.csv").open()):
        assert 0 < float(row["compute_s"]) < float(row["time_s"]), row
    split = report["search"]["trial_time_split_s"]
    assert 0 < split["compute"] < split["total"]
    return report


def test_baseline_cnn_search_end_to_end(ray_local, search_phantom, tmp_path, capsys):
    run = tmp_path / "cnn"
    args = [
        "--space",
        "baseline_cnn",
        "--data",
        str(search_phantom),
        "--num-samples",
        "3",
        "--max-epochs",
        "2",
        "--grace-period",
        "1",
        "--out",
        str(run),
        *TINY,
    ]
    assert _run(args) == 0
    report = _check_run_folder(run)
    assert report["search"]["trials"]["total"] == 3
    assert report["config"]["model"] == "cnn"
    assert report["config"]["max_epochs"] == report["best_trial"]["best_iteration"]
    rows = list(csv.DictReader((run / "trials.csv").open()))
    assert len(rows) == 3 and {r["status"] for r in rows} == {"TERMINATED"}
    out = capsys.readouterr().out
    assert "test accuracy (95% CI)" in out and "majority baseline" in out
    # an existing run folder is never overwritten
    assert _run(args) == 2
    assert "exists and is not empty" in capsys.readouterr().err


def test_resnet_stage2_search_end_to_end(ray_local, search_phantom, tmp_path):
    run = tmp_path / "r50"
    args = [
        "--space",
        "resnet_stage2",
        "--data",
        str(search_phantom),
        "--weights",
        "none",
        "--num-samples",
        "2",
        "--max-epochs",
        "4",
        "--grace-period",
        "4",
        "--ensemble",
        "2",
        "--out",
        str(run),
        *TINY,
    ]
    assert _run(args) == 0
    report = _check_run_folder(run)
    # the two trials refit, the test scores their mean probability; the best one alone is kept beside it
    assert report["ensemble"]["size"] == 2 and len(report["ensemble"]["members"]) == 2
    assert report["metrics"]["test_single"]["n"] == report["metrics"]["test"]["n"]
    assert (run / "ensemble" / "member-2" / "model.pt").is_file()
    assert "Ensemble of the 2 best trials" in (run / "report.md").read_text()
    assert report["config"]["model"] == "resnet50"
    assert report["best_trial"]["config"]["unfreeze_depth"] in (1, 2)
    assert report["search"]["space"] == "resnet_stage2"


def test_failing_trials_are_recorded_and_the_search_goes_on(ray_local, search_phantom, tmp_path, monkeypatch):
    # a trial whose config makes the network unbuildable fails; the others finish and the report lists it
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"model": "cnn", "cnn_depth": {"choice": [2, 7]}, "lr": 0.001}))
    run = tmp_path / "fail"
    args = [
        "--space",
        str(space),
        "--data",
        str(search_phantom),
        "--num-samples",
        "4",
        "--max-epochs",
        "1",
        "--grace-period",
        "1",
        "--max-failures",
        "0",
        "--out",
        str(run),
        *TINY,
    ]
    assert _run(args) == 0
    report = json.loads((run / "report.json").read_text())
    trials = report["search"]["trials"]
    assert trials["error"] >= 1 and trials["terminated"] >= 1
    assert report["search"]["failed_trials"][0]["error"]


def test_a_refit_on_train_and_val_trains_the_best_trials_epochs_and_keeps_the_last(
    ray_local, search_phantom, tmp_path
):
    """--refit-on train+val (the default): the validation images join the refit's training data, the epoch count is the best
    trial's, and split.csv still shows what the trials saw (train / val / test)."""
    run = tmp_path / "tv"
    args = ["--space", "resnet_stage2", "--data", str(search_phantom), "--weights", "none", "--num-samples", "2",
            "--max-epochs", "4", "--grace-period", "4", "--cache-views", "2", "--refit-on", "train+val"]  # fmt: skip
    assert _run([*args, "--out", str(run), *TINY]) == 0
    report = _check_run_folder(run)
    epochs = report["best_trial"]["best_iteration"]
    assert report["trained_on"] == "train+val" and report["search"]["refit_on"] == "train+val"
    assert report["config"]["max_epochs"] == epochs and report["epochs_trained"] == epochs
    assert report["best_epoch"] == epochs - 1 and report["selection"]["kept"] == "the last epoch"
    assert report["trained_on_feature_cache"] is True  # the cache holds training views of the val images
    splits = {row["split"] for row in csv.DictReader((run / "split.csv").open())}
    assert splits == {"train", "val", "test"}
    logged = list(csv.DictReader((run / "metrics.csv").open()))
    assert not any(
        row.get("val/loss") for row in logged
    )  # no validation ran: nothing was left to validate on


def test_a_final_fit_trains_on_every_image_and_is_scored_elsewhere(ray_local, search_phantom, tmp_path):
    """--final: train/val split of every image (no test), the refit on all of them, no test metrics; the model
    is then scored by tuning.evaluate on another set."""
    from modules.phantom import make_phantom
    from tuning import evaluation

    run = tmp_path / "final"
    args = ["--space", "baseline_cnn", "--data", str(search_phantom), "--num-samples", "2", "--max-epochs", "2",
            "--grace-period", "1", "--final", "--refit-on", "train+val", "--set", "cnn_depth=2"]  # fmt: skip
    assert _run([*args, "--out", str(run), *TINY]) == 0
    report = json.loads((run / "report.json").read_text())
    assert report["metrics"]["test"] is None and report["trained_on"] == "train+val"
    rows = list(csv.DictReader((run / "split.csv").open()))
    assert {r["split"] for r in rows} == {"train", "val"}  # every image trains the refit
    assert "final fit on every image" in (run / "report.md").read_text()
    other = make_phantom(tmp_path / "other", n_per_class=6, size=64, seed=11)
    scored = evaluation.run_evaluation(run / "model.pt", other, tmp_path / "eval")
    assert scored["metrics"]["test"]["n"] == 12


def test_a_final_fit_needs_the_refit_on_every_image(capsys):
    assert _run(["--space", "baseline_cnn", "--final", "--refit-on", "train", "--no-dashboard"]) == 2
    assert "--final trains the refit on every image; expected --refit-on train+val" in capsys.readouterr().err


def test_a_random_backbone_takes_batch_norm_statistics_from_the_training_images_only(search_phantom):
    from modules.dataset import prepare_data
    from tuning.backbone import base_config, calibrated, random_weights, with_batch_norm_statistics

    s = search_settings("--space", "resnet_stage2", "--weights", "none", "--image-size", "32")
    spec = s.spec()
    data = prepare_data(search_phantom, seed=0)
    weights = with_batch_norm_statistics(s, spec, data, random_weights(s.seed))
    assert weights.calibrated and "batch-norm statistics from the" in weights.description
    pixels = [r.pixels for r in data.images.records]
    train = [pixels[i] for i in data.indices("train")]
    base = base_config(s, spec)
    key = "layer4.2.bn3.running_var"
    assert torch.equal(weights.tensors[key], calibrated(random_weights(s.seed), base, train).tensors[key])
    assert not torch.equal(
        weights.tensors[key], calibrated(random_weights(s.seed), base, pixels).tensors[key]
    )
    pretrained = resolve_weights("none")  # not drawn at random by a search: left as it is
    assert with_batch_norm_statistics(s, spec, data, pretrained) is pretrained


def test_a_tpe_search_tracked_in_mlflow(ray_local, search_phantom, tmp_path):
    """--search-alg tpe --mlflow: every trial's parameters and per-epoch metrics, and the refit's test metrics
    and files, read back from the local store with MLflow's client; Ray's TensorBoard files beside them."""
    from mlflow.tracking import MlflowClient

    run = tmp_path / "tracked"
    args = ["--space", "baseline_cnn", "--data", str(search_phantom), "--num-samples", "3", "--max-epochs", "2",
            "--grace-period", "1", "--search-alg", "tpe", "--tpe-startup", "2", "--mlflow", "--out", str(run)]  # fmt: skip
    assert _run([*args, *TINY]) == 0
    report = _check_run_folder(run)
    assert report["search"]["search_alg"]["name"] == "tpe" and report["search"]["search_alg"]["seed"] == 0
    assert "drawn by Optuna's TPE (2 random start-up trials" in (run / "report.md").read_text()
    assert {"optuna", "mlflow", "code", "ray"} <= set(report["versions"])

    client = MlflowClient(f"sqlite:///{run.resolve()}/mlflow.db")
    experiment = client.get_experiment_by_name("tracked")
    assert experiment.artifact_location == (run / "mlartifacts").resolve().as_uri()
    runs = client.search_runs([experiment.experiment_id])
    trials = [r for r in runs if r.data.tags["mri_tune.kind"] == "trial"]
    by_epochs = {t["trial_id"]: t["iterations"] for t in csv.DictReader((run / "trials.csv").open())}
    assert len(trials) == 3 and all(r.info.status == "FINISHED" for r in trials)
    for r in trials:
        assert {"lr", "dropout", "weight_decay", "cnn_width", "cnn_depth", "model"} <= set(r.data.params)
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "val_loss")]
        trial_id = r.data.tags["trial_name"].removeprefix("train_trial_")
        assert steps == list(range(1, int(by_epochs[trial_id]) + 1))
    (refit,) = [r for r in runs if r.data.tags["mri_tune.kind"] == "refit"]
    assert refit.data.metrics["test/accuracy"] == pytest.approx(report["metrics"]["test"]["accuracy"])
    assert refit.data.metrics["test/accuracy_ci95/low"] == pytest.approx(
        report["metrics"]["test"]["accuracy_ci95"][0]
    )
    assert refit.data.params["lr"] == str(report["config"]["lr"])
    files = {a.path for a in client.list_artifacts(refit.info.run_id)}
    assert {"report.json", "report.md", "model.pt", "trials.csv", "trial_curves.png", "roc.png"} <= files
    stored = client.download_artifacts(refit.info.run_id, "model.pt", str(tmp_path / "back"))
    assert Path(stored).read_bytes() == (run / "model.pt").read_bytes()
    # Ray Tune's TensorBoard logger writes every trial's results beside its result.json
    assert len(list((run / "ray" / "tune").glob("train_trial_*/events.out.tfevents.*"))) == 3


def test_a_refit_that_would_repeat_the_best_trial_tests_its_weights_instead(
    ray_local, search_phantom, tmp_path
):
    """--refit-on train with a constant learning rate: the refit would train the best trial's config on the
    trial's images for its best epoch count; the trial's best-epoch weights (its one kept checkpoint) are tested
    instead, and model.pt holds exactly them."""
    run = tmp_path / "same"
    args = ["--space", "baseline_cnn", "--data", str(search_phantom), "--num-samples", "2", "--max-epochs", "3",
            "--grace-period", "3", "--refit-on", "train", "--out", str(run), *TINY]  # fmt: skip
    assert _run(args) == 0
    report = _check_run_folder(run)
    best = report["best_trial"]
    assert report["reused_trial"]["trial_id"] == best["trial_id"]
    assert report["reused_trial"]["epochs"] == best["best_iteration"] == report["epochs_trained"]
    assert report["best_epoch"] == best["best_iteration"] - 1 and report["time_s"]["fit"] == 0.0
    assert report["selection"]["value"] == pytest.approx(best["best_value"])
    kept = [p for p in (run / "ray").rglob(BEST_WEIGHTS) if best["trial_id"] in str(p)]
    assert len(kept) == 1  # Tune keeps one checkpoint per trial: the latest new best
    saved = torch.load(kept[0], weights_only=True)
    assert saved["iteration"] == best["best_iteration"]
    exported = torch.load(run / "model.pt", weights_only=True)["state_dict"]
    assert exported.keys() == saved["state_dict"].keys()
    assert all(torch.equal(exported[k], saved["state_dict"][k]) for k in exported)
    logged = list(csv.DictReader((run / "metrics.csv").open()))
    assert len(logged) == best["best_iteration"]  # the trial's curve up to its best epoch
    assert float(logged[-1]["val/loss"]) == pytest.approx(best["best_value"])


def _trial(tmp_path, *, iteration=3, history=((1, 0.9), (2, 0.8), (3, 0.7), (4, 0.75))):
    folder = tmp_path / "ckpt"
    folder.mkdir(exist_ok=True)
    state = {"w": torch.ones(2)}
    torch.save(
        {"state_dict": state, "iteration": iteration, "metric": "val/loss", "value": 0.7},
        folder / BEST_WEIGHTS,
    )
    best = min(history, key=lambda h: h[1])
    return {"trial_id": "t1", "best_iteration": best[0], "history": list(history),
            "checkpoint": Checkpoint.from_directory(str(folder)), "curves": {"val/loss": list(history)}}  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "trial_kwargs", "reused"),
    [
        (["--refit-on", "train"], {}, True),
        (["--refit-on", "train+val"], {}, False),  # other images: the refit trains
        (
            ["--refit-on", "train", "--set", "scheduler=cosine"],
            {},
            False,
        ),  # its curve depends on the epoch count
        (
            ["--refit-on", "train", "--metric", "val/auroc"],
            {},
            False,
        ),  # the refit picks its epoch by val/loss
        (["--refit-on", "train"], {"iteration": 2}, False),  # the kept checkpoint is not the best epoch
        # early stopping (patience 2) would stop the refit at epoch 3, before the best epoch 4
        (
            ["--refit-on", "train", "--set", "patience=2"],
            {"iteration": 4, "history": ((1, 0.5), (2, 0.6), (3, 0.7), (4, 0.4))},
            False,
        ),  # fmt: skip
        (
            ["--refit-on", "train", "--set", "patience=3"],
            {"iteration": 4, "history": ((1, 0.5), (2, 0.6), (3, 0.7), (4, 0.4))},
            True,
        ),  # fmt: skip
    ],
)
def test_a_refit_takes_the_trials_weights_only_when_it_would_repeat_that_trial(
    tmp_path, argv, trial_kwargs, reused
):
    from tuning.refit import refit_config, reusable_trial

    s = search_settings("--space", "baseline_cnn", "--out", str(tmp_path / "run"), *argv)
    trial = _trial(tmp_path, **trial_kwargs)
    trial["config"] = {}
    got = reusable_trial(s, trial, refit_config(s, trial))
    assert (got is not None) == reused
    if reused:
        assert got.epochs == trial["best_iteration"] and torch.equal(got.state_dict["w"], torch.ones(2))
        assert got.curves["val/loss"][-1][0] == trial["best_iteration"]
