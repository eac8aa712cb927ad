"""Write and load the self-describing classifier checkpoints (``model.pt``) of ``tuning.train`` and a search's
refit, and run them on decoded images.

A checkpoint is a plain dict loaded with ``torch.load(..., weights_only=True)`` (no pickled objects): the
``format``/``format_version`` tag, the network kind and hyperparameters, the preprocessing, the class names,
the data fingerprint, library versions and the network's ``state_dict``. Anything else (another program's
state_dict, a Lightning ``.ckpt``, an unknown format or version, a pickle of arbitrary objects) raises
``CheckpointError`` with one line that says what the file is and what is expected.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from modules.files import atomic_write_bytes
from modules.networks import NETWORK_KINDS, build_network
from modules.transforms import Preprocessing, build_transform, to_tensor

# The format written by write_checkpoint and read by read_checkpoint.
CHECKPOINT_FORMAT = "mri-tune/classifier"
# Version 2 (N classes): positive_class is None when there are more than two classes; version 1 files (two
# classes, positive_class = the last class, as version 2 writes it for the brain-MRI set) read unchanged.
CHECKPOINT_VERSION = 2
SUPPORTED_VERSIONS = (1, 2)
EXPECTED = "a model.pt written by python -m tuning.train or tuning.search"
_REQUIRED = {  # field -> accepted types
    "model": (str,),
    "network_hparams": (dict,),
    "num_classes": (int,),
    "classes": (list, tuple),
    "positive_class": (str, type(None)),
    "preprocessing": (dict,),
    "state_dict": (dict,),
}


class CheckpointError(ValueError):
    """A file is not a usable classifier checkpoint; the message says what it is and what is expected."""


def _first_reason(err: Exception) -> str:
    """The first sentence of torch.load's long error: what was wrong, without its advice on how to load the file
    anyway (allow-listing globals, weights_only=False), which is exactly what an untrusted file must not get."""
    text = str(err)
    found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n|$)", text)
    text = found.group(1) if found else (text.strip().splitlines() or [""])[0]
    sentence = re.split(r"\.(?:\s|$)", text.strip(), maxsplit=1)[0].strip()
    return sentence[:200] or type(err).__name__


def _one_line(err: Exception, limit: int = 300) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(obj: object) -> str:
    if isinstance(obj, Mapping):
        keys = list(obj)
        if "pytorch-lightning_version" in obj or {"state_dict", "optimizer_states", "loops"} & set(keys):
            return "a PyTorch Lightning checkpoint (.ckpt)"
        if keys and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return f"a bare state_dict of {len(keys)} tensors (weights only, no model description)"
        return f"a dict with keys {[str(k) for k in keys[:6]]}"
    return f"a {type(obj).__name__}"


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The validated checkpoint dict, ``state_dict`` included. Raises ``CheckpointError``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file; expected {EXPECTED}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError, RuntimeError, EOFError, ...: all mean "not a safe checkpoint"
        raise CheckpointError(
            f"checkpoint {path}: torch.load(weights_only=True) refused it ({_first_reason(err)}); "
            f"expected {EXPECTED}, which holds only tensors and plain values"
        ) from None
    if not isinstance(obj, Mapping) or "format" not in obj:
        raise CheckpointError(f"checkpoint {path} holds {_describe(obj)}; expected {EXPECTED}")
    if obj["format"] != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"checkpoint {path} has format {obj['format']!r}; expected {CHECKPOINT_FORMAT!r} ({EXPECTED})"
        )
    version = obj.get("format_version")
    if version not in SUPPORTED_VERSIONS:
        raise CheckpointError(
            f"checkpoint {path} has format_version {version!r}; this version of mri-tune reads "
            f"{', '.join(map(str, SUPPORTED_VERSIONS))} (written by a newer or older mri-tune?)"
        )
    obj = dict(obj)
    if version == 1 and isinstance(obj.get("classes"), list | tuple) and len(obj["classes"]) > 2:
        obj["positive_class"] = None  # version 1 named the last of N classes; N classes have no positive one
    _check_fields(path, obj)
    return obj


def _check_fields(path: Path, obj: Mapping) -> None:
    missing = [k for k in _REQUIRED if k not in obj]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {missing}; expected {EXPECTED}")
    wrong = [k for k, kinds in _REQUIRED.items() if not isinstance(obj[k], kinds) or isinstance(obj[k], bool)]
    if wrong:
        raise CheckpointError(f"checkpoint {path}: malformed field(s) {wrong}; expected {EXPECTED}")
    classes = list(obj["classes"])
    if (
        obj["model"] not in NETWORK_KINDS
        or len(classes) < 2
        or len(set(classes)) != len(classes)
        or not all(isinstance(c, str) for c in classes)
        or obj["num_classes"] != len(classes)
        or (len(classes) == 2 and obj["positive_class"] not in classes)
        or (len(classes) > 2 and obj["positive_class"] is not None)
    ):
        raise CheckpointError(
            f"checkpoint {path}: inconsistent description (model {obj['model']!r}, classes {classes}, "
            f"num_classes {obj['num_classes']}, positive_class {obj['positive_class']!r}); expected a model "
            f"kind in {list(NETWORK_KINDS)} and distinct class names: two that include the positive class, or "
            "more with positive_class null"
        )
    bad = [
        k for k, v in obj["state_dict"].items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)
    ]
    if bad or not obj["state_dict"]:
        raise CheckpointError(
            f"checkpoint {path}: state_dict is empty or holds non-tensors; expected {EXPECTED}"
        )


def write_checkpoint(path: str | os.PathLike, network: nn.Module, **meta) -> Path:
    """Write ``network``'s weights and ``meta`` as a checkpoint that needs no pickle (it loads with
    ``weights_only=True``) and describes itself, atomically. ``meta``: ``model``, ``network_hparams``,
    ``num_classes``, ``classes``, ``positive_class`` (the positive class's name for two classes, None for more:
    format version 2), ``config``, ``preprocessing``, ``weights_source``, ``data``, ``best_epoch``, ``versions``."""
    missing = sorted(set(_REQUIRED) - {"state_dict"} - set(meta))
    assert not missing, f"write_checkpoint needs {missing}"
    state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    payload = {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, **meta, "state_dict": state}
    buf = io.BytesIO()
    torch.save(payload, buf)
    return atomic_write_bytes(path, buf.getvalue())


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def model_info(meta: Mapping) -> dict:
    """The ``model`` block of evaluate and predict reports: which checkpoint (path and sha256), what it is,
    and what it was trained on. ``meta``: as ``load_classifier`` returns it."""
    return {
        "checkpoint": meta["path"],
        "sha256": file_sha256(meta["path"]),
        "model": meta["model"],
        "classes": list(meta["classes"]),
        "positive_class": meta["positive_class"],
        "best_epoch": meta.get("best_epoch"),
        "weights_source": meta.get("weights_source"),
        "weights_provenance": meta.get("weights_provenance"),
        "weights_layout": meta["network_hparams"].get("layout"),
        "trained_on": meta.get("data"),
        "versions": meta.get("versions"),
    }


def load_classifier(path: str | os.PathLike) -> tuple[nn.Module, dict]:
    """(network in eval mode on the CPU, meta) from a checkpoint; ``meta`` is the checkpoint without its
    ``state_dict`` plus ``"path"``. Raises ``CheckpointError`` (a ``ValueError``) for anything unusable."""
    ckpt = read_checkpoint(path)
    state = ckpt.pop("state_dict")
    meta = {**ckpt, "path": str(path)}
    hparams = dict(meta["network_hparams"])
    if meta["model"] == "resnet50":
        hparams["weights"] = "none"  # the checkpoint holds every weight; never download ImageNet's here
    preprocessing(meta)  # refuse a bad preprocessing block now, not at the first image
    try:
        network = build_network(meta["model"], num_classes=meta["num_classes"], **hparams)
    except (ValueError, TypeError) as err:
        raise CheckpointError(
            f"checkpoint {path}: cannot build the described network ({_one_line(err)})"
        ) from None
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(
            f"checkpoint {path}: the weights do not fit the described network ({_one_line(err)})"
        ) from None
    return network.eval(), meta


def preprocessing(meta: Mapping) -> Preprocessing:
    """The checkpoint's ``Preprocessing`` (sizes, normalisation)."""
    try:
        return Preprocessing.from_dict(meta["preprocessing"])
    except (TypeError, ValueError, KeyError) as err:
        raise CheckpointError(f"checkpoint {meta.get('path', '')}: bad preprocessing block ({err})") from None


def eval_transform(meta: Mapping):
    """The deterministic evaluation transform of a checkpoint: (1, H, W) uint8 -> normalised (3, S, S) float."""
    return build_transform(preprocessing(meta), train=False)


def uses_flip_tta(meta: Mapping) -> bool:
    """Whether the checkpoint's recipe predicts with left-right flip test-time augmentation (``tta`` of its
    config; checkpoints written before the option predict without)."""
    return (meta.get("config") or {}).get("tta", "none") == "flip"


def positive_index(meta: Mapping) -> int | None:
    """Index of a two-class checkpoint's positive class; None for more classes."""
    if meta["positive_class"] is None:
        return None
    return list(meta["classes"]).index(meta["positive_class"])


@torch.no_grad()
def predict_probabilities(
    network: nn.Module,
    images: Sequence[np.ndarray],
    transform,
    *,
    batch_size: int = 32,
    flip: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Softmax probabilities ``(N, num_classes)`` of grayscale ``uint8`` arrays ``(H, W)`` (any sizes).

    ``flip``: test-time augmentation, the mean of the probabilities of each transformed image and of its
    left-right mirror. ``progress``: called with (images done, images in all) after every batch."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out = []
    for start in range(0, len(images), batch_size):
        batch = torch.stack([transform(to_tensor(p)) for p in images[start : start + batch_size]])
        probs = network(batch).float().softmax(dim=1)
        if flip:
            probs = (probs + network(batch.flip(-1)).float().softmax(dim=1)) / 2
        out.append(probs.cpu().numpy())
        if progress is not None:
            progress(min(start + batch_size, len(images)), len(images))
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def decide_labels(probs: np.ndarray, meta: Mapping, *, threshold: float = 0.5) -> list[str]:
    """Class names from probabilities ``(N, num_classes)``: two classes, the positive class where its
    probability is at least ``threshold``, else the other; more classes, the most probable one."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be a probability in [0, 1], got {threshold}")
    classes, pos = list(meta["classes"]), positive_index(meta)
    if pos is None:
        return [classes[int(np.argmax(row))] for row in probs]
    others = [i for i in range(len(classes)) if i != pos]
    return [
        classes[pos] if row[pos] >= threshold else classes[others[int(np.argmax(row[others]))]]
        for row in probs
    ]
