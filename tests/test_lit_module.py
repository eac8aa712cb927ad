"""ClassifierModule: logged metric names, metric arithmetic on a hand-made example, optimisers, loss weights."""

import math

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from modules.lit_module import ClassifierModule
from modules.networks import PyTorchCNN

EVAL_NAMES = ("loss", "acc", "auroc", "sensitivity", "specificity", "f1")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors gain nothing from threads, and on a busy 2-core machine extra threads cost 5x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def separable(n: int, seed: int, size: int = 16) -> DataLoader:
    """Noise images whose mean brightness gives the label (class 1 bright), shuffled labels 0/1."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randperm(n, generator=generator) % 2
    images = torch.randn(n, 3, size, size, generator=generator) * 0.5 + (labels.float() * 2 - 1).view(
        -1, 1, 1, 1
    )
    return DataLoader(TensorDataset(images, labels), batch_size=8)


def cnn_module(**kwargs) -> ClassifierModule:
    torch.manual_seed(0)
    network = PyTorchCNN(width=4, depth=2, fc_hidden=8, dropout=0.0, fc_dropout=0.0)
    return ClassifierModule(network=network, **kwargs)


def trainer(tmp_path, max_epochs: int = 3) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        max_epochs=max_epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )


def logits_for(probs: list[float]) -> torch.Tensor:
    """Logits whose softmax gives positive-class probability ``probs`` (class 1)."""
    p = torch.tensor(probs)
    return torch.stack([torch.log1p(-p), torch.log(p)], dim=1)


def test_fit_and_test_log_every_metric(tmp_path):
    module, fitter = cnn_module(lr=1e-2), trainer(tmp_path)
    fitter.fit(module, separable(32, 0), separable(16, 1))
    names = {"train/loss", "train/acc"} | {f"val/{n}" for n in EVAL_NAMES}
    assert names <= set(fitter.callback_metrics)
    assert fitter.callback_metrics["val/auroc"] > 0.9  # the data are separable: the metrics see it
    results = fitter.test(module, separable(12, 2), verbose=False)[0]
    assert set(results) == {f"test/{n}" for n in EVAL_NAMES}
    assert all(math.isfinite(v) for v in results.values())
    assert sum(map(sum, module.last_confusion["test"])) == 12 and len(module.last_confusion["val"]) == 2
    assert (
        module.test_outputs["probs"].shape == (12,) and module.test_outputs["labels"].tolist().count(1) == 6
    )
    assert module.test_outputs["probs"].min() >= 0 and module.test_outputs["probs"].max() <= 1


def test_metrics_on_a_hand_made_example():
    # positives 0.9 0.8 0.7 0.3 and negatives 0.6 0.2 0.1 at threshold 0.5: tp 3, fn 1, tn 2, fp 1
    module = cnn_module()
    labels = torch.tensor([1, 1, 1, 1, 0, 0, 0])
    module.update_metrics("val", logits_for([0.9, 0.8, 0.7, 0.3, 0.6, 0.2, 0.1]), labels)
    values = module.compute_metrics("val")
    expected = {"acc": 5 / 7, "sensitivity": 3 / 4, "specificity": 2 / 3, "f1": 3 / 4, "auroc": 11 / 12}
    assert values == pytest.approx({f"val/{k}": v for k, v in expected.items()})
    assert module.last_confusion["val"] == [[2, 1], [1, 3]]


def test_positive_class_zero_swaps_the_roles():
    module = cnn_module(positive_class=0)
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1])  # the same example with class 0 as the tumour class
    module.update_metrics("test", logits_for([0.9, 0.8, 0.7, 0.3, 0.6, 0.2, 0.1]).flip(1), labels)
    values = module.compute_metrics("test")
    assert values["test/sensitivity"] == pytest.approx(3 / 4) and values["test/specificity"] == pytest.approx(
        2 / 3
    )
    assert module.last_confusion["test"] == [[2, 1], [1, 3]]


def test_three_classes_log_macro_metrics_and_keep_every_probability():
    torch.manual_seed(0)
    network = PyTorchCNN(width=4, depth=2, fc_hidden=8, dropout=0.0, fc_dropout=0.0, num_classes=3)
    module = ClassifierModule(network=network, num_classes=3)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    logits = torch.log(
        torch.tensor(
            [
                [0.8, 0.1, 0.1],
                [0.2, 0.7, 0.1],
                [0.1, 0.6, 0.3],
                [0.3, 0.3, 0.4],
                [0.1, 0.1, 0.8],
                [0.5, 0.2, 0.3],
            ]
        )
    )
    probs = module.update_metrics("test", logits, labels)
    assert probs.shape == (6, 3)
    values = module.compute_metrics("test")
    assert set(values) == {"test/acc", "test/auroc", "test/recall_macro", "test/precision_macro"}
    assert values["test/acc"] == pytest.approx(3 / 6) and values["test/recall_macro"] == pytest.approx(0.5)
    assert module.last_confusion["test"] == [[1, 1, 0], [0, 1, 1], [1, 0, 1]]


def test_positive_class_is_for_two_classes_only():
    network = PyTorchCNN(width=4, depth=2, fc_hidden=8, num_classes=3)
    with pytest.raises(
        ValueError, match=r"positive_class must be None with 3 classes \(scored one-vs-rest\), got 2"
    ):
        ClassifierModule(network=network, num_classes=3, positive_class=2)


def test_sgd_and_cosine(tmp_path):
    module, fitter = (
        cnn_module(optimizer="sgd", scheduler="cosine", lr=0.1, weight_decay=0.0),
        trainer(tmp_path, 2),
    )
    fitter.fit(module, separable(16, 0))
    optimizer, scheduler = fitter.optimizers[0], fitter.lr_scheduler_configs[0].scheduler
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.param_groups[0]["momentum"] == 0.9
    assert isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR) and scheduler.T_max == 2
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)  # annealed to 0 after max_epochs


def test_cosine_needs_an_epoch_count():
    with pytest.raises(ValueError, match="needs max_epochs"):
        cnn_module(scheduler="cosine").configure_optimizers()
    assert (
        cnn_module(scheduler="cosine", max_epochs=7).configure_optimizers()["lr_scheduler"]["scheduler"].T_max
        == 7
    )


def test_class_weights_and_smoothing_shape_the_training_loss_only(recwarn):
    module = cnn_module(class_weights=[1.0, 4.0], label_smoothing=0.1)
    images, labels = next(iter(separable(8, 3)))
    loss = float(module.training_step((images, labels), 0))  # no Trainer: self.log only warns
    logits = module(images).detach()
    assert loss == pytest.approx(
        F.cross_entropy(logits, labels, weight=torch.tensor([1.0, 4.0]), label_smoothing=0.1)
    )
    assert loss != pytest.approx(F.cross_entropy(logits, labels))


def test_only_trainable_parameters_reach_the_optimizer():
    module = cnn_module()
    module.network.features.requires_grad_(False)
    optimizer = module.configure_optimizers()
    assert {id(p) for p in optimizer.param_groups[0]["params"]} == {
        id(p) for p in module.network.classifier.parameters()
    }
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.defaults["fused"] is True  # the fused step on CPU (and GPU)


def test_predict_step_gives_probabilities_and_channels_last():
    module = cnn_module().eval()
    images, labels = next(iter(separable(8, 4)))
    probs = module.predict_step((images, labels), 0)
    assert probs.shape == (8, 2) and torch.allclose(probs.sum(1), torch.ones(8))
    assert torch.equal(probs, module.predict_step(images, 0))
    conv = module.network.features[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"optimizer": "adam"}, r"optimizer must be one of \('adamw', 'sgd'\), got 'adam'"),
        ({"scheduler": "step"}, "scheduler must be one of"),
        ({"class_weights": [1.0]}, r"class_weights must be None or 2 numbers > 0, got \[1.0\]"),
        ({"class_weights": [1.0, 0.0]}, "class_weights must be"),
        ({"positive_class": 2}, r"positive_class must be None or in 0..1, got 2"),
        ({"lr": 0}, "lr must be a number > 0, got 0"),
        ({"label_smoothing": 1.0}, r"label_smoothing must be in \[0, 1\)"),
        ({"num_classes": 1}, "num_classes must be an integer >= 2"),
        ({"max_epochs": 0}, "max_epochs must be None or >= 1"),
    ],
)
def test_arguments_are_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ClassifierModule(network=nn.Identity(), **kwargs)


def test_hyperparameters_are_saved_without_the_network():
    module = cnn_module(lr=3e-4, optimizer="sgd")
    assert module.hparams.lr == 3e-4 and module.hparams.optimizer == "sgd" and "network" not in module.hparams
