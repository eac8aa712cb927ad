"""LightningModule that wraps a classification network with loss, metrics and optimisers.

Batches are ``(images, labels)``: images ``(N, C, H, W)`` float, labels ``(N,)`` int in ``0..num_classes-1``.
Logged per epoch: ``train/loss``, ``train/acc``; ``val/`` and ``test/`` each ``loss`` and ``acc``, then

* two classes: ``auroc``, ``sensitivity``, ``specificity``, ``f1``, treating ``positive_class`` (tumour) as
  positive and scoring the softmax probability of the positive class at threshold 0.5;
* more classes: ``auroc`` (macro one-vs-rest), ``recall_macro`` and ``precision_macro`` (of the argmax).
"""

from __future__ import annotations

import math
import numbers

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    BinaryAUROC,
    BinaryConfusionMatrix,
    BinaryF1Score,
    BinaryRecall,
    BinarySpecificity,
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassConfusionMatrix,
    MulticlassPrecision,
    MulticlassRecall,
)

from modules.schedules import WarmupCosine

OPTIMIZERS = ("adamw", "sgd")
SCHEDULERS = ("none", "cosine", "warmup_cosine")
EVAL_SPLITS = ("val", "test")


def _eval_metrics(num_classes: int) -> nn.ModuleDict:
    if num_classes > 2:
        return nn.ModuleDict(
            {
                "acc": MulticlassAccuracy(num_classes, average="micro"),
                "multi": MetricCollection(
                    {
                        "auroc": MulticlassAUROC(num_classes, average="macro"),
                        "recall_macro": MulticlassRecall(num_classes, average="macro"),
                        "precision_macro": MulticlassPrecision(num_classes, average="macro"),
                    }
                ),
                "confusion": MulticlassConfusionMatrix(num_classes),
            }
        )
    return nn.ModuleDict(
        {
            "acc": MulticlassAccuracy(num_classes, average="micro"),
            "binary": MetricCollection(
                {
                    "auroc": BinaryAUROC(),
                    "sensitivity": BinaryRecall(),
                    "specificity": BinarySpecificity(),
                    "f1": BinaryF1Score(),
                }
            ),
            "confusion": BinaryConfusionMatrix(),
        }
    )


class ClassifierModule(pl.LightningModule):
    """Cross-entropy training of ``network`` (images -> logits) with torchmetrics metrics per split.

    ``lr``: learning rate of the parameters trainable when the optimiser is built (the head, under
    ``StagedFineTuning``; the whole network otherwise). ``optimizer``: ``"adamw"`` or ``"sgd"`` (momentum 0.9).
    ``scheduler``: ``"none"``, ``"cosine"`` (per-epoch cosine annealing to 0 over ``max_epochs``, which
    defaults to the Trainer's) or ``"warmup_cosine"`` (per step: a linear warm-up over ``warmup_epochs`` epochs,
    for the head from the start and for the stage-2 backbone group from the step it joins, under one cosine
    decay to 0; ``modules.schedules.WarmupCosine``). ``class_weights`` and ``label_smoothing`` shape the training loss only;
    ``val/loss`` and ``test/loss`` are plain cross-entropy so that they compare across configurations.

    ``positive_class``: index of the positive (tumour) class of a two-class problem; None means the last
    class there, and must be None for more classes (scored one-vs-rest, macro-averaged).

    After each validation/test epoch ``last_confusion[split]`` holds ``[[tn, fp], [fn, tp]]`` (two classes) or
    the ``num_classes`` x ``num_classes`` matrix, rows true and columns predicted class; after testing
    ``test_outputs`` holds ``{"probs_all": (N, num_classes) probabilities, "labels": (N,)}`` on the CPU, plus
    ``"probs": (N,)`` positive-class probabilities for two classes.
    """

    def __init__(
        self,
        *,
        network: nn.Module,
        num_classes: int = 2,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        optimizer: str = "adamw",
        scheduler: str = "none",
        max_epochs: int | None = None,
        warmup_epochs: float = 0.0,
        class_weights: list[float] | None = None,
        label_smoothing: float = 0.0,
        positive_class: int | None = None,
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        _validate(locals())
        self.save_hyperparameters(ignore=["network"])
        self.positive = (1 if positive_class is None else positive_class) if num_classes == 2 else None
        self.network = network.to(memory_format=torch.channels_last) if channels_last else network
        weight = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
        self.train_criterion = nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.eval_metrics = nn.ModuleDict({split: _eval_metrics(num_classes) for split in EVAL_SPLITS})
        self.last_confusion: dict[str, list[list[int]]] = {}
        self.test_outputs: dict[str, torch.Tensor] = {}
        self._test_chunks: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``(N, C, H, W)`` -> logits ``(N, num_classes)``."""
        if self.hparams.channels_last and images.ndim == 4:  # (N, F) cached features have no layout
            images = images.contiguous(memory_format=torch.channels_last)
        return self.network(images)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, labels = batch
        logits = self(images)
        loss = self.train_criterion(logits, labels)
        self.train_acc(logits, labels)
        self.log("train/loss", loss, on_step=False, on_epoch=True, batch_size=len(labels))
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, batch_size=len(labels))
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step("val", batch)

    def test_step(self, batch, batch_idx: int) -> None:
        probs, labels = self._eval_step("test", batch)  # (N, num_classes), (N,)
        self._test_chunks.append((probs.detach().cpu(), labels.detach().cpu()))

    def predict_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        """Softmax probabilities ``(N, num_classes)``; ``batch`` is images or ``(images, labels)``."""
        images = batch[0] if isinstance(batch, list | tuple) else batch
        return self(images).float().softmax(dim=1)

    def _eval_step(self, split: str, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Log the plain cross-entropy, update the split's metrics; returns probabilities (N, C) and labels."""
        images, labels = batch
        logits = self(images).float()
        loss = F.cross_entropy(logits, labels)
        self.log(
            f"{split}/loss",
            loss,
            on_step=False,
            on_epoch=True,
            batch_size=len(labels),
            prog_bar=split == "val",
        )
        return self.update_metrics(split, logits, labels), labels

    def update_metrics(self, split: str, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Feed logits ``(N, num_classes)`` and labels ``(N,)`` to ``split``'s metrics; returns the softmax
        probabilities ``(N, num_classes)``."""
        metrics = self.eval_metrics[split]
        probs_all = logits.softmax(dim=1)
        metrics["acc"].update(logits, labels)
        if self.positive is None:
            metrics["multi"].update(probs_all, labels)
            metrics["confusion"].update(probs_all, labels)
            return probs_all
        probs = probs_all[:, self.positive]
        positive = (labels == self.positive).long()
        metrics["binary"].update(probs, positive)
        metrics["confusion"].update(probs, positive)
        return probs_all

    def compute_metrics(self, split: str) -> dict[str, float]:
        """Epoch values of ``split``'s metrics (keys ``split/acc`` ...); stores the confusion matrix and resets."""
        metrics = self.eval_metrics[split]
        group = "binary" if self.positive is not None else "multi"
        values = {"acc": metrics["acc"].compute(), **metrics[group].compute()}
        self.last_confusion[split] = metrics["confusion"].compute().tolist()
        for metric in metrics.values():
            metric.reset()
        return {f"{split}/{name}": float(value) for name, value in values.items()}

    def on_validation_epoch_end(self) -> None:
        self.log_dict(self.compute_metrics("val"), prog_bar=False)

    def on_test_epoch_start(self) -> None:
        self._test_chunks = []

    def on_test_epoch_end(self) -> None:
        self.log_dict(self.compute_metrics("test"))
        if self._test_chunks:
            probs, labels = (torch.cat(parts) for parts in zip(*self._test_chunks, strict=True))
            self.test_outputs = {"probs_all": probs, "labels": labels}
            if self.positive is not None:
                self.test_outputs["probs"] = probs[:, self.positive]

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            raise ValueError("no trainable parameters: every parameter has requires_grad=False")
        hp = self.hparams
        if hp.optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=hp.lr, momentum=0.9, weight_decay=hp.weight_decay)
        else:
            # the fused kernel: one pass over every parameter instead of a loop of small ops (about half the
            # step's time on a 22 M-parameter stage-2 tail); PyTorch has it for float tensors on CPU and GPU
            fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
            opt = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay, fused=fused)
        if hp.scheduler == "none":
            return opt
        epochs = hp.max_epochs or (self.trainer.max_epochs if self._trainer is not None else None)
        if not epochs or epochs < 1:
            raise ValueError(
                f"scheduler={hp.scheduler!r} needs max_epochs >= 1 (module or Trainer), got {epochs!r}"
            )
        if hp.scheduler == "cosine":
            cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": cosine, "interval": "epoch"}}
        per_epoch = math.ceil(self.trainer.estimated_stepping_batches / self.trainer.max_epochs)
        warm = WarmupCosine(
            opt, total_steps=per_epoch * epochs, warmup_steps=round(per_epoch * hp.warmup_epochs)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": warm, "interval": "step"}}


def _number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _require(ok: bool, name: str, value: object, expected: str) -> None:
    if not ok:
        raise ValueError(f"{name} must be {expected}, got {value!r}")


def _validate(hp: dict) -> None:
    """Raise ValueError naming the first bad constructor argument, what was found and what is expected."""
    n, weights = hp["num_classes"], hp["class_weights"]
    _require(
        isinstance(n, numbers.Integral) and not isinstance(n, bool) and n >= 2,
        "num_classes",
        n,
        "an integer >= 2",
    )
    _require(_number(hp["lr"]) and hp["lr"] > 0, "lr", hp["lr"], "a number > 0")
    _require(
        _number(hp["weight_decay"]) and hp["weight_decay"] >= 0, "weight_decay", hp["weight_decay"], ">= 0"
    )
    _require(hp["optimizer"] in OPTIMIZERS, "optimizer", hp["optimizer"], f"one of {OPTIMIZERS}")
    _require(hp["scheduler"] in SCHEDULERS, "scheduler", hp["scheduler"], f"one of {SCHEDULERS}")
    _require(
        _number(hp["warmup_epochs"]) and hp["warmup_epochs"] >= 0,
        "warmup_epochs",
        hp["warmup_epochs"],
        ">= 0",
    )
    smoothing = hp["label_smoothing"]
    _require(_number(smoothing) and 0 <= smoothing < 1, "label_smoothing", smoothing, "in [0, 1)")
    positive = hp["positive_class"]
    if n == 2:
        _require(
            positive is None or (positive in range(n) and not isinstance(positive, bool)),
            "positive_class",
            positive,
            f"None or in 0..{n - 1}",
        )
    else:
        _require(positive is None, "positive_class", positive, f"None with {n} classes (scored one-vs-rest)")
    ok_weights = weights is None or (
        isinstance(weights, list | tuple) and len(weights) == n and all(_number(w) and w > 0 for w in weights)
    )
    _require(ok_weights, "class_weights", weights, f"None or {n} numbers > 0")
    epochs = hp["max_epochs"]
    _require(
        epochs is None or (isinstance(epochs, int) and epochs >= 1), "max_epochs", epochs, "None or >= 1"
    )
