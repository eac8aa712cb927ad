"""The training engine shared by ``tuning.train`` and the search's trials and refit.

``TrainConfig`` is the one typed form of a run's hyperparameters: the search turns Ray's config dict into it in
exactly one place, and checkpoints and reports store it as a plain dict.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import pytorch_lightning as pl
import torch

from modules.cached_training import CachedDataModule, CachedTail
from modules.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION  # noqa: F401 - the writer's format
from modules.datamodule import MRIDataModule
from modules.dataset import TrialData
from modules.finetune import StagedFineTuning
from modules.lit_module import ClassifierModule
from modules.networks import WeightsState, build_network, load_backbone_state, resolve_weights
from modules.transforms import Preprocessing

MODELS = ("cnn", "resnet50")
MONITORS = {"val/loss": "min", "val/auroc": "max", "val/acc": "max"}


@dataclass
class TrainConfig:
    """Hyperparameters of one training run. Units: learning rates per step, epochs counted from 0."""

    model: str = "resnet50"  # "cnn" or "resnet50"
    weights: str = "imagenet"  # resnet50: "imagenet", a state_dict path, or "none"
    lr: float = 1e-3  # head (resnet50) or whole network (cnn)
    backbone_lr: float = 1e-4  # unfrozen resnet50 stages, from stage2_epoch on
    dropout: float = 0.3  # before the final linear layer
    weight_decay: float = 1e-4
    optimizer: str = "adamw"  # "adamw" or "sgd"
    scheduler: str = "none"  # "none" or "cosine"
    stage2_epoch: int = 5  # resnet50: first epoch with unfrozen stages (>= max_epochs: never)
    unfreeze_depth: int = 1  # resnet50: 1 = layer4, 2 = layer3-4, 3 = layer2-4, 4 = all
    freeze_bn_stats: bool = True  # keep batch-norm running statistics of unfrozen stages
    label_smoothing: float = 0.0
    class_weights: str = "none"  # "none" or "balanced" (inverse class frequency of the training split)
    cnn_width: int = 32
    cnn_depth: int = 4
    cnn_fc_hidden: int = 128
    batch_size: int = 16
    max_epochs: int = 10
    patience: int = 5  # early stopping, epochs without improvement of `monitor`
    monitor: str = "val/loss"
    image_size: int = 224
    resize: int = 256
    rotation: float = 10.0
    crop: str = "none"  # "none" or "brain" (cut to the head's bounding box before resizing)
    intensity: float = 0.0  # training brightness/contrast jitter, factor within 1 +- intensity
    scale: float = 0.0  # training zoom jitter, factor within 1 +- scale
    seed: int = 0
    precision: str = "auto"  # "auto" (see resolve_precision), "32-true", "bf16-mixed"
    threads: int = 0  # torch CPU threads; 0 keeps torch's default
    num_workers: int = 0  # data-loader workers (images are already decoded in memory)

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; expected one of {', '.join(MODELS)}")
        if self.monitor not in MONITORS:
            raise ValueError(f"unknown monitor {self.monitor!r}; expected one of {', '.join(MONITORS)}")
        if self.max_epochs < 1 or self.batch_size < 1 or self.patience < 1:
            raise ValueError(
                f"max_epochs, batch_size and patience must be >= 1, got {self.max_epochs}, "
                f"{self.batch_size}, {self.patience}"
            )
        if self.class_weights not in ("none", "balanced"):
            raise ValueError(f"class_weights must be 'none' or 'balanced', got {self.class_weights!r}")
        if self.precision not in ("auto", "32-true", "bf16-mixed"):
            raise ValueError(f"precision must be auto, 32-true or bf16-mixed, got {self.precision!r}")
        checks = [
            ("lr", self.lr > 0, "> 0"),
            ("backbone_lr", self.backbone_lr > 0, "> 0"),
            ("weight_decay", self.weight_decay >= 0, ">= 0"),
            ("dropout", 0 <= self.dropout < 1, "within [0, 1)"),
            ("label_smoothing", 0 <= self.label_smoothing < 1, "within [0, 1)"),
            ("stage2_epoch", self.stage2_epoch >= 0, ">= 0"),
            ("unfreeze_depth", 1 <= self.unfreeze_depth <= 4, "within 1..4"),
            ("cnn_width", self.cnn_width >= 1, ">= 1"),
            ("cnn_depth", 1 <= self.cnn_depth <= 8, "within 1..8"),
            ("cnn_fc_hidden", self.cnn_fc_hidden >= 1, ">= 1"),
            ("threads", self.threads >= 0, ">= 0"),
            ("num_workers", self.num_workers >= 0, ">= 0"),
            ("optimizer", self.optimizer in ("adamw", "sgd"), "adamw or sgd"),
            ("scheduler", self.scheduler in ("none", "cosine"), "none or cosine"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(f"{name} must be {expected}, got {getattr(self, name)!r}")
        self.preprocessing  # noqa: B018 - validates image_size, resize and rotation

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """Build from a dict, refusing unknown keys (a typo in a search space must not pass silently)."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown hyperparameter(s) {unknown}; expected some of {sorted(names)}")
        typed = {}
        for f in fields(cls):
            if f.name in d:
                typed[f.name] = _coerce(f, d[f.name])
        return cls(**typed)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing(
            image_size=self.image_size,
            resize=self.resize,
            rotation=self.rotation,
            crop=self.crop,
            intensity=self.intensity,
            scale=self.scale,
        )

    @property
    def monitor_mode(self) -> str:
        return MONITORS[self.monitor]


def _coerce(f: dataclasses.Field, value):
    """Ray samples numpy scalars and ints for floats; store plain Python values of the declared type."""
    kind = f.type if isinstance(f.type, str) else f.type.__name__
    if kind == "int":
        if float(value) != int(value):
            raise ValueError(f"{f.name} must be an integer, got {value!r}")
        return int(value)
    if kind == "float":
        return float(value)
    if kind == "bool":
        return bool(value)
    return str(value)


def network_hparams(cfg: TrainConfig) -> dict:
    if cfg.model == "cnn":
        return {
            "width": cfg.cnn_width,
            "depth": cfg.cnn_depth,
            "dropout": cfg.dropout,
            "fc_hidden": cfg.cnn_fc_hidden,
        }
    return {"dropout": cfg.dropout}


def build_classifier(
    cfg: TrainConfig,
    num_classes: int,
    *,
    class_weights: list[float] | None = None,
    backbone_state: WeightsState | None = None,
    cached_depth: int | None = None,
    positive: int | None = None,
):
    """The network (weights loaded) wrapped in the LightningModule. Returns (module, weights description).

    ``positive``: index of a two-class problem's positive class (None: the last class); None for N classes.

    ``backbone_state``: weights already read (by the search's driver, shipped through Ray's object store);
    without it, ``cfg.weights`` is resolved here. ``cached_depth``: wrap the ResNet50 in ``CachedTail`` for
    training on a ``FeatureCache`` (its cut for that unfreeze depth).
    """
    if cfg.model == "resnet50":
        network = build_network("resnet50", num_classes=num_classes, weights="none", **network_hparams(cfg))
        state = backbone_state if backbone_state is not None else resolve_weights(cfg.weights)
        described = state.description
        if state.tensors is not None:
            load_backbone_state(network, state.tensors, state.description)
    else:
        network = build_network(cfg.model, num_classes=num_classes, **network_hparams(cfg))
        described = "none"
    if cached_depth is not None:  # train only the part above the cut, on cached frozen-backbone outputs
        network = CachedTail(network, cached_depth)
    module = ClassifierModule(
        network=network,
        num_classes=num_classes,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        optimizer=cfg.optimizer,
        scheduler=cfg.scheduler,
        max_epochs=cfg.max_epochs,
        class_weights=class_weights,
        label_smoothing=cfg.label_smoothing,
        positive_class=positive if num_classes == 2 else None,
    )
    return module, described


def balanced_weights(data: TrialData) -> list[float]:
    """Inverse class frequency on the training split, normalised to mean 1."""
    train = [t for t, s in zip(data.targets, data.splits, strict=True) if s == "train"]
    counts = [max(1, train.count(k)) for k in range(len(data.classes))]
    k, n = len(counts), sum(counts)
    return [n / (k * c) for c in counts]


def build_datamodule(cfg: TrainConfig, data: TrialData, *, cache=None) -> pl.LightningDataModule:
    """Loaders over the images, or with ``cache`` (a ``FeatureCache`` serving this run's splits) over the cached
    outputs of the frozen layers (pooled features, then the cut of ``cfg.unfreeze_depth`` from stage 2 on)."""
    if cache is not None:
        return CachedDataModule(
            cache,
            depth=cfg.unfreeze_depth,
            stage2_epoch=cfg.stage2_epoch,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
        )
    return MRIDataModule(
        data.images,
        data.targets,
        data.splits,
        preprocessing=cfg.preprocessing,
        batch_size=cfg.batch_size,
        num_workers=cfg.num_workers,
        seed=cfg.seed,
    )


def staging_callbacks(cfg: TrainConfig) -> list[pl.Callback]:
    if cfg.model != "resnet50":
        return []
    return [
        StagedFineTuning(
            stage2_epoch=cfg.stage2_epoch,
            unfreeze_depth=cfg.unfreeze_depth,
            backbone_lr=cfg.backbone_lr,
            freeze_bn_stats=cfg.freeze_bn_stats,
        )
    ]


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU has bfloat16 instructions (x86 AVX512-BF16 or AMX-BF16, read from /proc/cpuinfo).
    Without them bf16 is emulated and not faster, so "auto" keeps float32 there."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:  # not Linux
            return False
    return any(flag in ("avx512_bf16", "amx_bf16") for flag in cpuinfo.split())


def resolve_precision(cfg: TrainConfig, *, cuda: bool | None = None) -> str:
    """With "auto": bf16-mixed on a GPU and on a CPU with bf16 instructions, 32-true elsewhere. On this project's
    2-core CPU (AVX512-BF16) bf16 autocast ran the 30 stage-2 ResNet50 trials of a 5-fold cross-validation 1.78x
    faster, and its out-of-fold predictions matched the float32 run's (no decision changed, probabilities within
    0.015; results/brain_mri/SPEED.md). ``cuda``: whether the run has a GPU (default: whether torch sees one)."""
    if cfg.precision != "auto":
        return cfg.precision
    cuda = torch.cuda.is_available() if cuda is None else cuda
    return "bf16-mixed" if cuda or cpu_has_native_bf16() else "32-true"


def apply_threads(cfg: TrainConfig) -> None:
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)


def make_trainer(
    cfg: TrainConfig,
    *,
    callbacks: list[pl.Callback],
    logger=False,
    default_root_dir: str | Path | None = None,
    enable_progress_bar: bool = False,
    enable_checkpointing: bool = False,
    reload_dataloaders: bool = False,
) -> pl.Trainer:
    """A Trainer for one run. ``reload_dataloaders``: new loaders every epoch (the cached path switches from
    pooled features to cut activations when stage 2 starts)."""
    return pl.Trainer(
        reload_dataloaders_every_n_epochs=1 if reload_dataloaders else 0,
        max_epochs=cfg.max_epochs,
        accelerator="auto",
        devices=1,
        precision=resolve_precision(cfg),
        callbacks=callbacks,
        logger=logger,
        default_root_dir=default_root_dir,
        enable_progress_bar=enable_progress_bar,
        enable_checkpointing=enable_checkpointing,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        deterministic=False,
    )
