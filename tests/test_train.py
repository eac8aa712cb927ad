"""Short runs of the training engine (tuning.train) on tiny phantom data."""

import json

import numpy as np
import pytest
import torch

from modules.checkpoint import (
    CHECKPOINT_FORMAT,
    eval_transform,
    load_classifier,
    predict_probabilities,
    uses_flip_tta,
)
from modules.dataset import prepare_data
from modules.phantom import make_phantom
from modules.statistics import rank_auc
from tuning import engine
from tuning import train as train_cli
from tuning.cli import run_main
from tuning.config import TrainConfig
from tuning.training import run_training


@pytest.fixture(scope="module")
def tiny_phantom(tmp_path_factory):
    return make_phantom(tmp_path_factory.mktemp("phantom"), n_per_class=14, size=64, seed=3)


@pytest.fixture(scope="module")
def tiny_data(tiny_phantom):
    return prepare_data(tiny_phantom, seed=0, synthetic=True)


FAST = {"image_size": 32, "resize": 36, "batch_size": 8, "threads": 2}


def test_cnn_run_writes_a_complete_report(tiny_data, tmp_path):
    cfg = TrainConfig.from_dict({**FAST, "model": "cnn", "max_epochs": 2, "cnn_depth": 2, "cnn_width": 8})
    report = run_training(cfg, tiny_data, tmp_path, command="test", progress=False)
    test = report["metrics"]["test"]
    n_test = tiny_data.splits.count("test")
    assert test["n"] == n_test
    assert test["accuracy_ci95"][0] <= test["accuracy"] <= test["accuracy_ci95"][1]
    assert sum(map(sum, test["confusion_matrix"])) == n_test
    assert 0 <= report["best_epoch"] < 2
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk["kind"] == "train" and on_disk["data"]["synthetic"] is True
    assert on_disk["data"]["fingerprint"] == tiny_data.images.fingerprint
    for name in ("metrics.csv", "split.csv", "model.pt", "loss_curves.png", "confusion_matrix.png"):
        assert (tmp_path / name).is_file(), name
    ckpt = torch.load(tmp_path / "model.pt", weights_only=True)
    assert ckpt["format"] == CHECKPOINT_FORMAT and ckpt["model"] == "cnn"
    assert ckpt["classes"] == ["no", "yes"] and ckpt["preprocessing"]["image_size"] == 32
    assert ckpt["data"]["fingerprint"] == tiny_data.images.fingerprint
    assert not (tmp_path / "lightning_checkpoints").exists()


def test_flip_tta_reports_the_checkpoints_mean_over_the_mirror(tiny_data, tmp_path):
    cfg = TrainConfig.from_dict(
        {
            **FAST,
            "model": "cnn",
            "max_epochs": 2,
            "cnn_depth": 2,
            "cnn_width": 8,
            "crop": "none",
            "tta": "flip",
        }
    )
    outputs = {}
    report = run_training(cfg, tiny_data, tmp_path, progress=False, test_outputs=outputs)
    network, meta = load_classifier(tmp_path / "model.pt")
    assert uses_flip_tta(meta)
    pixels = [tiny_data.images.records[i].pixels for i in tiny_data.indices("test")]
    transform = eval_transform(meta)
    plain = predict_probabilities(network, pixels, transform)
    mirrored = predict_probabilities(network, [np.ascontiguousarray(p[:, ::-1]) for p in pixels], transform)
    # the reported test outputs are the mean over each scan and its mirror, not the plain outputs
    assert np.allclose(outputs["probs_all"].numpy(), (plain + mirrored) / 2, atol=1e-5)
    assert not np.allclose(outputs["probs_all"].numpy(), plain, atol=1e-4)
    assert report["metrics"]["test"]["auroc"] == pytest.approx(
        rank_auc(outputs["labels"].numpy() == 1, outputs["probs"].numpy())
    )


def test_resnet50_staged_run(tiny_data, tmp_path):
    cfg = TrainConfig.from_dict(
        {
            **FAST,
            "model": "resnet50",
            "weights": "none",
            "max_epochs": 2,
            "stage2_epoch": 1,
            "unfreeze_depth": 1,
            "weights_layout": "v1",
        }
    )
    report = run_training(cfg, tiny_data, tmp_path, progress=False)
    # a random init takes its batch-norm statistics from the training images (the train split only)
    n_train = tiny_data.splits.count("train")
    assert (
        report["weights"]
        == f"none (random init, seed 0); batch-norm statistics from the {n_train} training images"
    )
    assert report["weights_layout"] == "v1"
    assert report["versions"]["code"]  # the revision (or "unknown" outside a git checkout)
    # every library whose code shapes the numbers, at its exact installed version
    assert {"torchmetrics", "numpy", "scikit_learn", "pillow", "ray"} <= set(report["versions"])
    assert "optuna" not in report["versions"]  # optional libraries only where a run used them
    saved = torch.load(tmp_path / "model.pt", weights_only=True)
    assert saved["network_hparams"]["layout"] == "v1"
    assert (saved["config"]["unfreeze_depth"], saved["config"]["unfreeze_blocks"]) == (
        1,
        0,
    )  # what stage 2 trained
    assert report["epochs_trained"] == 2
    assert report["metrics"]["test"]["n"] == tiny_data.splits.count("test")


def test_config_refuses_unknown_and_bad_values():
    with pytest.raises(ValueError, match="unknown hyperparameter"):
        TrainConfig.from_dict({"learning_rate": 0.1})
    with pytest.raises(ValueError, match="unknown model"):
        TrainConfig(model="vgg")
    with pytest.raises(ValueError, match="must be an integer"):
        TrainConfig.from_dict({"max_epochs": 2.5})
    assert TrainConfig.from_dict({"max_epochs": 3.0}).max_epochs == 3


def test_unfreeze_blocks_is_validated_and_takes_precedence_over_the_depth():
    assert TrainConfig().unfreeze_blocks == 0 and TrainConfig().trainable_blocks == 3  # depth 1: layer4
    assert TrainConfig(unfreeze_depth=2).trainable_blocks == 9
    assert TrainConfig(unfreeze_depth=2, unfreeze_blocks=4).trainable_blocks == 4
    for bad in (-1, 17):
        with pytest.raises(
            ValueError,
            match=rf"unfreeze_blocks must be within 0..16 \(0: whole stages by unfreeze_depth\), got {bad}",
        ):
            TrainConfig(unfreeze_blocks=bad)
    with pytest.raises(ValueError, match="unfreeze_blocks must be an integer"):
        TrainConfig.from_dict({"unfreeze_blocks": 2.5})
    args = train_cli.get_args_parser().parse_args(["--out", "run", "--unfreeze-blocks", "5"])
    assert args.unfreeze_blocks == 5
    help_text = train_cli.get_args_parser().format_help()
    assert "precedence over --unfreeze-depth" in " ".join(help_text.split())


def test_cli_refuses_to_overwrite_a_run(tmp_path, tiny_phantom, capsys):
    (tmp_path / "report.json").write_text("{}")
    code = run_main(train_cli.main, ["--data", str(tiny_phantom), "--out", str(tmp_path), "--model", "cnn"])
    assert code == 2
    assert "already holds a report.json" in capsys.readouterr().err


def test_cli_end_to_end(tmp_path, tiny_phantom, capsys):
    args = [
        "--data",
        str(tiny_phantom),
        "--out",
        str(tmp_path / "run"),
        "--model",
        "cnn",
        "--max-epochs",
        "1",
        "--image-size",
        "32",
        "--resize",
        "36",
        "--cnn-depth",
        "2",
        "--no-progress",
    ]
    assert run_main(train_cli.main, args) == 0
    out = capsys.readouterr().out
    assert "test accuracy" in out and "majority baseline" in out
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["command"].startswith("python -m tuning.train --data")
    page = (tmp_path / "run" / "report.html").read_text()
    assert report["data"]["fingerprint"] in page and "majority baseline" in page
    assert report["config"]["precision"] == "auto"
    assert report["precision"] == engine.resolve_precision(TrainConfig())  # what "auto" ran as here


def test_auto_precision_is_bf16_only_with_hardware_support(monkeypatch):
    flags = "flags\t\t: fpu sse2 avx2 avx512f avx512bw"
    assert not engine.cpu_has_native_bf16(flags)  # AVX512 without the bf16 instructions emulates it
    assert engine.cpu_has_native_bf16(flags + " avx512_bf16")
    assert engine.cpu_has_native_bf16(flags + " amx_tile amx_bf16")
    monkeypatch.setattr(engine.torch.cuda, "is_available", lambda: False)
    for native, expected in ((False, "32-true"), (True, "bf16-mixed")):
        monkeypatch.setattr(engine, "cpu_has_native_bf16", lambda native=native: native)
        assert engine.resolve_precision(TrainConfig()) == expected
        assert engine.resolve_precision(TrainConfig(precision="32-true")) == "32-true"  # asked: kept
    monkeypatch.setattr(engine.torch.cuda, "is_available", lambda: True)
    assert engine.resolve_precision(TrainConfig()) == "bf16-mixed"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_resnet50_run_on_gpu_with_bf16(tiny_data, tmp_path):
    cfg = TrainConfig.from_dict(
        {
            **FAST,
            "model": "resnet50",
            "weights": "none",
            "max_epochs": 2,
            "stage2_epoch": 1,
            "precision": "auto",
        }
    )
    report = run_training(cfg, tiny_data, tmp_path, progress=False)
    assert report["metrics"]["test"]["n"] == tiny_data.splits.count("test")
    assert report["precision"] == "bf16-mixed"
    ckpt = torch.load(tmp_path / "model.pt", weights_only=True)
    assert all(t.device.type == "cpu" for t in ckpt["state_dict"].values())  # exported for any machine


def test_a_run_on_train_and_val_writes_one_checkpoint_the_last_epochs(tiny_data, tmp_path, monkeypatch):
    """train_on="train+val" keeps the last epoch: its Lightning checkpoint is written once, at the end (a
    checkpoint after every epoch would be a write of the whole state per epoch for nothing)."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    saved = []
    original = ModelCheckpoint._save_checkpoint

    def counting(self, trainer, filepath):
        saved.append((trainer.current_epoch, filepath))
        return original(self, trainer, filepath)

    monkeypatch.setattr(ModelCheckpoint, "_save_checkpoint", counting)
    cfg = TrainConfig.from_dict({**FAST, "model": "cnn", "max_epochs": 3, "cnn_depth": 2, "cnn_width": 8})
    report = run_training(cfg, tiny_data, tmp_path, command="test", progress=False, train_on="train+val")
    assert [epoch for epoch, _ in saved] == [2] and "last-epoch=2" in saved[0][1]
    assert report["best_epoch"] == 2 and report["epochs_trained"] == 3
