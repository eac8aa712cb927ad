"""modules.checkpoint: model.pt files load into an eval-mode network; anything else is refused in one line."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch

from modules import checkpoint as ckpt_mod
from modules.checkpoint import (
    CheckpointError,
    decide_labels,
    eval_transform,
    load_classifier,
    predict_probabilities,
    read_checkpoint,
)
from modules.networks import PyTorchCNN, ResNet50Classifier
from tuning import evaluate, predict
from tuning.cli import run_main


@pytest.fixture(scope="module")
def run(tiny_run):
    return tiny_run


@pytest.fixture(scope="module")
def payload(run) -> dict:
    return torch.load(run.checkpoint, map_location="cpu", weights_only=True)


def test_the_writer_writes_the_format_the_reader_reads(payload):
    assert payload["format"] == ckpt_mod.CHECKPOINT_FORMAT
    assert payload["format_version"] == ckpt_mod.CHECKPOINT_VERSION in ckpt_mod.SUPPORTED_VERSIONS


def test_load_classifier_rebuilds_the_network_in_eval_mode(run, payload):
    network, meta = load_classifier(run.checkpoint)
    assert isinstance(network, PyTorchCNN) and not network.training
    assert "state_dict" not in meta and meta["path"] == str(run.checkpoint)
    assert meta["classes"] == ["no", "yes"] and meta["positive_class"] == "yes"
    assert meta["data"]["fingerprint"] == run.data.images.fingerprint
    for key, value in network.state_dict().items():
        assert torch.equal(value, payload["state_dict"][key]), key
    transform = eval_transform(meta)
    images = [run.data.images.records[i].pixels for i in run.data.indices("test")]
    assert transform(torch.from_numpy(images[0])[None]).shape == (3, 32, 32)
    probs = predict_probabilities(network, images, transform, batch_size=4)
    assert probs.shape == (len(images), 2) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    assert np.array_equal(probs, predict_probabilities(network, images, transform, batch_size=32))
    labels = decide_labels(np.array([[0.2, 0.8], [0.7, 0.3]]), meta, threshold=0.5)
    assert labels == ["yes", "no"]


def test_resnet50_checkpoint_loads_without_downloading(payload, tmp_path):
    net = ResNet50Classifier(dropout=0.2)
    path = tmp_path / "r50.pt"
    torch.save(
        {
            **payload,
            "model": "resnet50",
            "network_hparams": {"dropout": 0.2},
            "weights_source": "torchvision:IMAGENET1K_V2",
            "state_dict": net.state_dict(),
        },
        path,
    )
    network, meta = load_classifier(path)
    assert isinstance(network, ResNet50Classifier) and not network.training
    assert torch.equal(network.head[1].weight, net.head[1].weight)
    assert meta["network_hparams"] == {"dropout": 0.2}  # weights="none" is used, not stored back


def test_a_checkpoint_loads_in_the_layout_it_was_trained_in(payload, tmp_path):
    """A v1 network written with the writer comes back in v1 (its strides, hence its outputs); a checkpoint
    written before layouts existed (no ``layout``) is v1.5, as every network was then."""
    net = ResNet50Classifier(dropout=0.2, layout="v1").eval()
    meta = {k: v for k, v in payload.items() if k not in ("format", "format_version", "state_dict")}
    path = ckpt_mod.write_checkpoint(
        tmp_path / "v1.pt",
        net,
        **{**meta, "model": "resnet50", "network_hparams": {"dropout": 0.2, "layout": "v1"}},
    )
    network, loaded = load_classifier(path)
    assert network.layout == "v1" and network.backbone.layer2[0].conv1.stride == (2, 2)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(network(x), net(x))
    assert ckpt_mod.model_info(loaded)["weights_layout"] == "v1"
    old = _save(
        tmp_path / "old.pt", {**torch.load(path, weights_only=True), "network_hparams": {"dropout": 0.2}}
    )
    assert load_classifier(old)[0].layout == "v1.5"


def _save(path: Path, obj) -> Path:
    torch.save(obj, path)
    return path


BAD = {
    "bare state_dict": (lambda p, pl: _save(p, PyTorchCNN(depth=2).state_dict()), "bare state_dict"),
    "lightning ckpt": (
        lambda p, pl: _save(
            p,
            {
                "epoch": 3,
                "global_step": 40,
                "pytorch-lightning_version": "2.4.0",
                "state_dict": {"network." + k: v for k, v in pl["state_dict"].items()},
                "hyper_parameters": {"lr": 0.001},
            },
        ),
        "PyTorch Lightning checkpoint",
    ),
    "other format": (lambda p, pl: _save(p, {**pl, "format": "someone/else"}), "has format 'someone/else'"),
    "future version": (lambda p, pl: _save(p, {**pl, "format_version": 7}), "format_version 7"),
    "arbitrary pickle": (
        lambda p, pl: _save(p, {**pl, "extra": argparse.Namespace(x=1)}),
        "refused it (Unsupported global: GLOBAL argparse.Namespace",
    ),
    "not a pickle": (
        lambda p, pl: p.write_bytes(b"PK\x03\x04 not a checkpoint at all" * 4) and p,
        "refused it",
    ),
    "empty file": (lambda p, pl: p.write_bytes(b"") or p, "refused it"),
    "wrong shapes": (
        lambda p, pl: _save(p, {**pl, "network_hparams": {**pl["network_hparams"], "width": 4}}),
        "do not fit the described network",
    ),
    "malformed classes": (
        lambda p, pl: _save(p, {**pl, "classes": "noyes"}),
        "malformed field(s) ['classes']",
    ),
    "unknown positive class": (
        lambda p, pl: _save(p, {**pl, "positive_class": "tumour"}),
        "inconsistent description",
    ),
    "a list": (lambda p, pl: _save(p, [torch.zeros(2)]), "holds a list"),
    "two classes without a positive one": (
        lambda p, pl: _save(p, {**pl, "positive_class": None}),
        "inconsistent description",
    ),
}


def test_version_1_checkpoints_still_load(payload, tmp_path):
    """Binary checkpoints written before N classes (format_version 1) load and decide as before."""
    assert payload["format_version"] == 2 and payload["positive_class"] == "yes"
    network, meta = load_classifier(_save(tmp_path / "v1.pt", {**payload, "format_version": 1}))
    assert meta["positive_class"] == "yes" and ckpt_mod.positive_index(meta) == 1
    assert decide_labels(np.array([[0.6, 0.4], [0.45, 0.55]]), meta) == ["no", "yes"]


def test_n_class_checkpoints_decide_by_the_most_probable_class():
    meta = {"classes": ["a", "b", "c"], "positive_class": None}
    assert ckpt_mod.positive_index(meta) is None
    assert decide_labels(np.array([[0.2, 0.3, 0.5], [0.4, 0.35, 0.25]]), meta, threshold=0.9) == ["c", "a"]


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_checkpoints_are_refused_in_one_line(case, payload, tmp_path, capsys):
    make, expected = BAD[case]
    path = make(tmp_path / "model.pt", payload)
    with pytest.raises(CheckpointError) as info:
        load_classifier(path)
    message = str(info.value)
    assert isinstance(info.value, ValueError) and expected in message and "\n" not in message
    assert "weights_only set to" not in message and "safe_globals" not in message  # no advice to trust it
    code = run_main(
        evaluate.main, ["--checkpoint", str(path), "--data", str(tmp_path), "--out", str(tmp_path / "o")]
    )
    err = capsys.readouterr().err
    assert (
        code == 2 and err.startswith("error: checkpoint") and err.count("\n") == 1 and "Traceback" not in err
    )


def test_missing_checkpoint_and_predict_cli(tmp_path, capsys):
    with pytest.raises(CheckpointError, match="no such file"):
        read_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "sd.pt").write_bytes(b"")
    code = run_main(
        predict.main, ["--checkpoint", str(tmp_path / "sd.pt"), str(tmp_path), "--out", str(tmp_path / "o")]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: checkpoint") and "Traceback" not in err
