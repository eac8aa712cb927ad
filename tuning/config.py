"""``TrainConfig``: the one typed form of a run's hyperparameters.

The search turns Ray's config dict into a ``TrainConfig`` in exactly one place (the trainable); checkpoints and
reports store it as a plain dict. Each field's metadata is its command-line flag (``tuning.flags``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field, fields

from modules.networks import MAX_UNFREEZE_BLOCKS, depth_blocks
from modules.transforms import INTENSITY_NORMS, Preprocessing
from tuning.flags import option

MODELS = ("cnn", "resnet50")
MONITORS = {"val/loss": "min", "val/auroc": "max", "val/acc": "max"}
# Lightning metric name -> the name Tune reports and ranks on (mapped once, here)
TUNE_METRICS = {
    "val_loss": "val/loss",
    "val_auroc": "val/auroc",
    "val_acc": "val/acc",
    "train_loss": "train/loss",
}
RANK_METRICS = {"val/loss": ("val_loss", "min"), "val/auroc": ("val_auroc", "max")}
PRECISIONS = ("auto", "32-true", "bf16-mixed")
WEIGHTS_LAYOUTS = ("auto", "v1", "v1.5")
TTA_MODES = ("none", "flip")
SCHEDULES = ("none", "cosine", "warmup_cosine")
PRECISION_HELP = (
    "auto (bf16-mixed on a GPU or a CPU with bf16 instructions, else 32-true), 32-true or bf16-mixed"
)
TRAINING = "model and training"


def hp(default, help: str, **kwargs):
    """A hyperparameter field with its flag's help."""
    return field(default=default, metadata=option(help, group=TRAINING, **kwargs))


@dataclass
class TrainConfig:
    """Hyperparameters of one training run. Units: learning rates per step, epochs counted from 0.

    The defaults are the staged ResNet50 the development searches chose (results/brain_mri/LEVERS.md: the brain
    crop, stage 2 from epoch 3 with layer4 at a backbone learning rate of 2e-5, 6 epochs, flip test-time
    augmentation of the reported predictions), so that
    ``python -m tuning.train --model resnet50`` without flags trains what the confirmed search trains."""

    model: str = hp("resnet50", "network: cnn or resnet50")
    weights: str = hp(
        "imagenet", "resnet50 weights: imagenet (torchvision cache/download), a state_dict file, or none"
    )
    weights_layout: str = hp(
        "auto",
        "resnet50 stride layout: v1.5 (torchvision's), v1 (stride in the first 1x1 conv of each down-sampling "
        "block: MSRA's and Keras's ResNet-50), or auto: the weights' own where known (torchvision's: v1.5; a file "
        "of modules.weights.KNOWN_WEIGHTS, by sha256), else v1.5",
    )
    lr: float = hp(1e-3, "learning rate of the head (resnet50) or the whole network (cnn)")
    backbone_lr: float = hp(2e-5, "learning rate of the unfrozen resnet50 stages, from stage2_epoch on")
    dropout: float = hp(0.3, "dropout before the final linear layer")
    weight_decay: float = hp(1e-4, "weight decay")
    optimizer: str = hp("adamw", "optimizer: adamw or sgd")
    scheduler: str = hp(
        "none",
        "learning-rate schedule: none, cosine (per epoch, to 0 at the last), or warmup_cosine (per step: a linear "
        "warm-up over --warmup-epochs for the head and again for the unfrozen stages when they join, under one "
        "cosine decay)",
    )
    warmup_epochs: float = hp(0.0, "warmup_cosine: epochs of linear warm-up (fractions allowed)")
    stage2_epoch: int = hp(3, "resnet50: first epoch (from 0) with unfrozen stages; >= max-epochs: never")
    unfreeze_depth: int = hp(1, "resnet50 stages to unfreeze: 1 = layer4 ... 4 = all")
    unfreeze_blocks: int = hp(
        0,
        "resnet50 bottleneck blocks to unfreeze, counted from the top (layer4 has 3, layer3 6, layer2 4, "
        "layer1 3): 1..16, 16 with the stem; above 0 it takes precedence over --unfreeze-depth (3 trains what "
        "depth 1 trains, 9 what depth 2 does); 0: whole stages by --unfreeze-depth",
    )
    freeze_bn_stats: bool = hp(True, "keep the batch-norm running statistics of unfrozen stages")
    label_smoothing: float = hp(0.0, "label smoothing of the cross-entropy")
    class_weights: str = hp("none", "none, or balanced (inverse class frequency of the training split)")
    cnn_width: int = hp(32, "cnn: channels of the first block")
    cnn_depth: int = hp(4, "cnn: conv blocks")
    cnn_fc_hidden: int = hp(128, "cnn: units of the hidden fully connected layer")
    batch_size: int = hp(16, "images per batch")
    max_epochs: int = hp(6, "epochs")
    patience: int = hp(5, "early stopping: epochs without improvement of --monitor")
    monitor: str = hp(
        "val/loss", "validation metric that picks the best epoch: val/loss, val/auroc or val/acc"
    )
    image_size: int = hp(224, "network input side in px")
    resize: int = hp(256, "side in px the image is resized to before cropping")
    rotation: float = hp(10.0, "maximum random rotation in degrees (training only)")
    crop: str = hp("brain", "none, or brain: cut each scan to the head's bounding box before resizing")
    intensity: float = hp(0.0, "training brightness/contrast jitter: factors within 1 +- this")
    scale: float = hp(0.0, "training zoom jitter: factors within 1 +- this")
    intensity_norm: str = hp(
        "none",
        "none, or percentile: stretch each scan's head intensities (1st-99th percentile) over the full range, "
        "in training and evaluation alike",
    )
    tta: str = hp(
        "flip",
        "test-time augmentation of the reported predictions (test split, evaluate, predict): none, or flip "
        "(the mean of the probabilities of a scan and of its left-right mirror)",
    )
    seed: int = hp(0, "seed of the weights' initialisation and the data order")
    precision: str = hp("auto", PRECISION_HELP)
    threads: int = hp(0, "torch CPU threads (0: torch's default)")
    num_workers: int = hp(0, "data-loader workers (images are already decoded in memory)")

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
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be auto, 32-true or bf16-mixed, got {self.precision!r}")
        checks = [
            ("lr", self.lr > 0, "> 0"),
            ("backbone_lr", self.backbone_lr > 0, "> 0"),
            ("weight_decay", self.weight_decay >= 0, ">= 0"),
            ("dropout", 0 <= self.dropout < 1, "within [0, 1)"),
            ("label_smoothing", 0 <= self.label_smoothing < 1, "within [0, 1)"),
            ("stage2_epoch", self.stage2_epoch >= 0, ">= 0"),
            ("unfreeze_depth", 1 <= self.unfreeze_depth <= 4, "within 1..4"),
            (
                "unfreeze_blocks",
                0 <= self.unfreeze_blocks <= MAX_UNFREEZE_BLOCKS,
                f"within 0..{MAX_UNFREEZE_BLOCKS} (0: whole stages by unfreeze_depth)",
            ),
            ("cnn_width", self.cnn_width >= 1, ">= 1"),
            ("cnn_depth", 1 <= self.cnn_depth <= 8, "within 1..8"),
            ("cnn_fc_hidden", self.cnn_fc_hidden >= 1, ">= 1"),
            ("threads", self.threads >= 0, ">= 0"),
            ("num_workers", self.num_workers >= 0, ">= 0"),
            ("optimizer", self.optimizer in ("adamw", "sgd"), "adamw or sgd"),
            ("scheduler", self.scheduler in SCHEDULES, "none, cosine or warmup_cosine"),
            ("warmup_epochs", self.warmup_epochs >= 0, ">= 0"),
            ("tta", self.tta in TTA_MODES, "none or flip"),
            ("intensity_norm", self.intensity_norm in INTENSITY_NORMS, "none or percentile"),
            ("weights_layout", self.weights_layout in WEIGHTS_LAYOUTS, "auto, v1 or v1.5"),
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
        return cls(**{f.name: coerce(f, d[f.name]) for f in fields(cls) if f.name in d})

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
            intensity_norm=self.intensity_norm,
        )

    @property
    def trainable_blocks(self) -> int:
        """The resnet50 bottleneck blocks stage 2 trains: ``unfreeze_blocks``, or when it is 0 those of the
        ``unfreeze_depth`` stages (3, 9, 13, 16). The feature cache names its cuts by this number."""
        return self.unfreeze_blocks or depth_blocks(self.unfreeze_depth)

    @property
    def monitor_mode(self) -> str:
        return MONITORS[self.monitor]


FIELD_TYPES = {f.name: f.type for f in fields(TrainConfig)}  # name -> "int" / "float" / "str" / "bool"


def coerce(f: dataclasses.Field, value):
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
