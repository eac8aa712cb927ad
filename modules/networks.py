"""Networks: a small CNN trained from scratch, a ResNet50 with a new head, and ResNet50 weight loading.

Both networks are plain ``nn.Module``s that map images ``(N, C, H, W)`` (float, ImageNet-normalised) to
logits ``(N, num_classes)``; the LightningModule in ``modules.lit_module`` adds loss, metrics and optimisers.
"""

from __future__ import annotations

import hashlib
import numbers
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torchvision.models import ResNet50_Weights, resnet50

NETWORK_KINDS = ("cnn", "resnet50")
_OPTIONS = {
    "cnn": ("in_channels", "width", "depth", "dropout", "fc_hidden", "fc_dropout"),
    "resnet50": ("weights", "dropout"),
}
_PREFIXES = ("module.", "network.", "backbone.")
_HEAD_PREFIXES = ("fc.", "head.")


class WeightsError(ValueError):
    """Pretrained weights could not be obtained or do not fit the network; the message says what and why."""


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

    Weights start random; use ``load_resnet50_weights`` (or ``build_network``) for pretrained ones.
    """

    STAGES = ("layer1", "layer2", "layer3", "layer4")
    STEM = ("conv1", "bn1")

    def __init__(self, *, num_classes: int = 2, dropout: float = 0.0) -> None:
        super().__init__()
        _check_int("num_classes", num_classes, 2)
        self.backbone = resnet50(weights=None)
        self.backbone.fc = nn.Identity()
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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _describe(obj: object) -> str:
    if isinstance(obj, Mapping):
        return f"a {type(obj).__name__} with keys {list(obj)[:5]}"
    return f"a {type(obj).__name__}"


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load a state_dict from ``path`` with ``weights_only=True``; unwrap ``state_dict``/``model`` keys."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError... for bad files
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise WeightsError(
            f"weights file {path} is not a loadable PyTorch state_dict "
            f"(torch.load with weights_only=True failed: {type(err).__name__}: {reason})"
        ) from err
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not obj:
        raise WeightsError(f"weights file {path} holds {_describe(obj)}, expected a non-empty state_dict")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightsError(
            f"weights file {path} holds {_describe(obj)}, expected a state_dict of name -> tensor; "
            f"non-tensor entries: {bad[:5]}"
        )
    return dict(obj)


def _strip_prefixes(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop wrapper prefixes (``module.``, ``network.``, ``backbone.``) and classification-head keys."""
    out = {}
    for key, value in state.items():
        while key.startswith(_PREFIXES):
            key = key.split(".", 1)[1]
        if not key.startswith(_HEAD_PREFIXES):
            out[key] = value
    return out


def _load_into_backbone(backbone: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Copy ``state`` into ``backbone`` after checking that every key exists with the right shape."""
    state = _strip_prefixes(state)
    expected = backbone.state_dict()
    # num_batches_tracked is absent from older state_dicts; batch norm fills it in itself.
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    problems = [
        f"{label} ({len(items)}): {items[:5]}"
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes))
        if items
    ]
    if problems:
        raise WeightsError(f"weights from {source} do not fit a torchvision resnet50: " + "; ".join(problems))
    backbone.load_state_dict(state, strict=False)


def _imagenet_state_dict() -> Mapping[str, torch.Tensor]:
    """torchvision's IMAGENET1K_V2 state_dict from its cache, downloading it if needed."""
    weights = ResNet50_Weights.IMAGENET1K_V2
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as err:  # URLError, OSError, RuntimeError (hash)... all mean "not available here"
        cache = Path(torch.hub.get_dir()) / "checkpoints"
        raise WeightsError(
            f"could not get torchvision's ResNet50 IMAGENET1K_V2 weights ({type(err).__name__}: {err}). "
            f"They are downloaded from {weights.url} into torchvision's cache {cache}; offline, put the file "
            f"there, or pass a local state_dict file with --weights PATH (or --weights none for random init)"
        ) from err


def load_resnet50_weights(model: nn.Module, weights: str | os.PathLike) -> str:
    """Load pretrained weights into ``model`` (a ``ResNet50Classifier``, or a torchvision resnet50 itself).

    ``weights``: ``"imagenet"`` (torchvision IMAGENET1K_V2 via its cache/download), ``"none"`` (keep the random
    init), or the path of a state_dict file (raw, or under a ``state_dict``/``model`` key; ``module.``,
    ``network.`` and ``backbone.`` prefixes and ``fc.*``/``head.*`` keys are ignored). The head stays random.
    Returns a short description for reports, e.g. ``"file:/abs/path sha256=7c825f4af954"``.
    Raises ``WeightsError`` (a ``ValueError``) saying what went wrong.
    """
    state = resolve_weights(weights)
    if state.tensors is not None:
        load_backbone_state(model, state.tensors, state.description)
    return state.description


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
    model = ResNet50Classifier(num_classes=num_classes, dropout=hparams.get("dropout", 0.0))
    model.weights_source = load_resnet50_weights(model, hparams.get("weights", "imagenet"))
    return model


@dataclass(frozen=True)
class WeightsState:
    """Backbone weights read once (tensors, or None for random init) and their description for reports."""

    tensors: dict[str, torch.Tensor] | None
    description: str


def resolve_weights(weights: str | os.PathLike) -> WeightsState:
    """Read ``weights`` ("imagenet", "none" or a state_dict path, as in ``load_resnet50_weights``) once,
    so that the tensors can be shipped to many trials instead of each trial reading or downloading them."""
    keyword = str(weights).lower()
    if keyword == "none":
        return WeightsState(None, "none")
    if keyword == "imagenet":
        return WeightsState(dict(_imagenet_state_dict()), "torchvision:IMAGENET1K_V2")
    path = Path(weights).expanduser().resolve()
    if not path.is_file():
        raise WeightsError(
            f"weights file not found: {path} (expected 'imagenet', 'none' or the path of a state_dict file)"
        )
    return WeightsState(_read_state_dict(path), f"file:{path} sha256={_sha256(path)[:12]}")


def load_backbone_state(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load tensors from ``resolve_weights`` into a ``ResNet50Classifier``'s backbone (shapes checked)."""
    _load_into_backbone(getattr(model, "backbone", model), state, source)
