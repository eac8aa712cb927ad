"""Networks: a small CNN trained from scratch and a ResNet50 (in either stride layout) with a new head.

Both networks are plain ``nn.Module``s that map images ``(N, C, H, W)`` (float, ImageNet-normalised) to
logits ``(N, num_classes)``; the LightningModule in ``modules.lit_module`` adds loss, metrics and optimisers.
"""

from __future__ import annotations

import numbers

import torch
from torch import nn
from torchvision.models import resnet50

from modules.weights import LAYOUTS, load_resnet50_weights

NETWORK_KINDS = ("cnn", "resnet50")
# ResNet50's bottleneck blocks, bottom to top, as backbone submodule names (layer1: 3, layer2: 4, layer3: 6,
# layer4: 3); staged fine-tuning counts the blocks it unfreezes from the top of this list
STAGE_BLOCKS = {"layer1": 3, "layer2": 4, "layer3": 6, "layer4": 3}
BLOCK_NAMES = tuple(f"{stage}.{i}" for stage, n in STAGE_BLOCKS.items() for i in range(n))
MAX_UNFREEZE_BLOCKS = len(BLOCK_NAMES)
_OPTIONS = {
    "cnn": ("in_channels", "width", "depth", "dropout", "fc_hidden", "fc_dropout"),
    "resnet50": ("weights", "dropout", "layout"),
}


def _check_int(name: str, value: object, low: int, high: int | None = None) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or value < low
        or (high is not None and value > high)
    ):
        expected = f">= {low}" if high is None else f"in {low}..{high}"
        raise ValueError(f"{name} must be an integer {expected}, got {value!r}")
    return int(value)


def _check_prob(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1), got {value!r}")
    return float(value)


def depth_blocks(depth: int) -> int:
    """The number of bottleneck blocks in the last ``depth`` residual stages: 1 -> 3 (layer4), 2 -> 9,
    3 -> 13, 4 -> 16 (every block; unfreezing them all also unfreezes the stem, as depth 4 does)."""
    stages = tuple(STAGE_BLOCKS)
    _check_int("unfreeze depth", depth, 1, len(stages))
    return sum(STAGE_BLOCKS[name] for name in stages[-depth:])


class PyTorchCNN(nn.Module):
    """A from-scratch CNN: ``depth`` blocks of conv3x3 / batch-norm / ReLU / 2x2 max-pool / channel dropout,
    then global average pooling and two fully connected layers.

    Channels start at ``width`` and double each block, capped at ``8 * width``. Every block halves the
    resolution, so inputs need at least ``2**depth`` pixels per side; any larger size works.
    """

    def __init__(
        self,
        *,
        num_classes: int = 2,
        in_channels: int = 3,
        width: int = 32,
        depth: int = 4,
        dropout: float = 0.25,
        fc_hidden: int = 128,
        fc_dropout: float = 0.5,
    ) -> None:
        super().__init__()
        num_classes, in_channels = (
            _check_int("num_classes", num_classes, 2),
            _check_int("in_channels", in_channels, 1),
        )
        width, depth = _check_int("width", width, 1), _check_int("depth", depth, 1, 8)
        fc_hidden = _check_int("fc_hidden", fc_hidden, 1)
        dropout, fc_dropout = _check_prob("dropout", dropout), _check_prob("fc_dropout", fc_dropout)
        self.min_size = 2**depth
        blocks, channels = [], in_channels
        for i in range(depth):
            out = min(width * 2**i, width * 8)
            blocks += [
                nn.Conv2d(channels, out, 3, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
                nn.Dropout2d(dropout),
            ]
            channels = out
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(channels, fc_hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(fc_dropout),
            nn.Linear(fc_hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(N, in_channels, H, W)`` with ``H, W >= 2**depth`` -> logits ``(N, num_classes)``."""
        if min(x.shape[-2:]) < self.min_size:
            raise ValueError(
                f"input is {tuple(x.shape[-2:])} px; this CNN needs at least {self.min_size} px a side"
            )
        return self.classifier(self.features(x))


class ResNet50Classifier(nn.Module):
    """torchvision ResNet50 (``self.backbone``, its ``fc`` replaced by identity: 2048 features per image)
    followed by a new head ``Dropout(dropout) -> Linear(2048, num_classes)`` (``self.head``).

    ``layout``: "v1.5" (torchvision's) or "v1" (stride 2 in the first 1x1 conv of each down-sampling block;
    see ``LAYOUTS``); the same parameters either way. Weights start random; use ``load_resnet50_weights`` (or
    ``build_network``) for pretrained ones.
    """

    STAGES = ("layer1", "layer2", "layer3", "layer4")
    STEM = ("conv1", "bn1")

    def __init__(self, *, num_classes: int = 2, dropout: float = 0.0, layout: str = "v1.5") -> None:
        super().__init__()
        _check_int("num_classes", num_classes, 2)
        if layout not in LAYOUTS:
            raise ValueError(f"unknown ResNet50 layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
        self.layout = layout
        self.backbone = resnet50(weights=None)
        self.backbone.fc = nn.Identity()
        if layout == "v1":
            for stage in (self.backbone.layer2, self.backbone.layer3, self.backbone.layer4):
                stage[0].conv1.stride, stage[0].conv2.stride = (2, 2), (1, 1)
        self.head = nn.Sequential(nn.Dropout(_check_prob("dropout", dropout)), nn.Linear(2048, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(N, 3, H, W)`` (ImageNet-normalised; any H, W >= 32) -> logits ``(N, num_classes)``."""
        return self.head(self.backbone(x))

    @classmethod
    def stage_names(cls, depth: int) -> tuple[str, ...]:
        """Backbone submodule names of the last ``depth`` residual stages: 1 = layer4, 2 = layer3-4,
        3 = layer2-4, 4 = the whole backbone (layer1-4 plus the conv1/bn1 stem)."""
        _check_int("unfreeze depth", depth, 1, len(cls.STAGES))
        names = cls.STAGES[-depth:]
        return cls.STEM + names if depth == len(cls.STAGES) else names

    def stage_modules(self, depth: int) -> list[nn.Module]:
        """The backbone submodules named by ``stage_names(depth)`` (depth 4 includes the conv1/bn1 stem)."""
        return [getattr(self.backbone, name) for name in self.stage_names(depth)]

    @classmethod
    def block_names(cls, blocks: int) -> tuple[str, ...]:
        """Backbone submodule names of the last ``blocks`` bottleneck blocks, bottom to top (``"layer3.5"``,
        ``"layer4.0"``, ...): 1 = layer4[2] ... 16 = every block plus the conv1/bn1 stem. The last 3, 9 and 13
        blocks hold exactly the parameters of ``stage_names`` depth 1, 2 and 3."""
        _check_int("unfreeze blocks", blocks, 1, MAX_UNFREEZE_BLOCKS)
        names = BLOCK_NAMES[-blocks:]
        return cls.STEM + names if blocks == MAX_UNFREEZE_BLOCKS else names

    def block_modules(self, blocks: int) -> list[nn.Module]:
        """The backbone submodules named by ``block_names(blocks)`` (16 includes the conv1/bn1 stem)."""
        return [self.backbone.get_submodule(name) for name in self.block_names(blocks)]


def build_network(kind: str, *, num_classes: int = 2, **hparams: object) -> nn.Module:
    """Build a network by name: ``"cnn"`` (``PyTorchCNN`` keyword arguments) or ``"resnet50"`` (``weights``:
    see ``load_resnet50_weights``, default ``"imagenet"``; ``dropout``: head dropout, default 0).

    A ResNet50 gets the attribute ``weights_source`` (the description returned by the loader).
    """
    if kind not in _OPTIONS:
        raise ValueError(f"unknown network kind {kind!r}; valid kinds: {', '.join(NETWORK_KINDS)}")
    unknown = sorted(set(hparams) - set(_OPTIONS[kind]))
    if unknown:
        raise ValueError(f"{kind} takes the options {', '.join(_OPTIONS[kind])}; got unknown {unknown}")
    if kind == "cnn":
        return PyTorchCNN(num_classes=num_classes, **hparams)
    model = ResNet50Classifier(
        num_classes=num_classes, dropout=hparams.get("dropout", 0.0), layout=hparams.get("layout", "v1.5")
    )
    model.weights_source = load_resnet50_weights(model, hparams.get("weights", "imagenet"))
    return model
