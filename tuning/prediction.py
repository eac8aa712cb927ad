"""Label new scans with a saved model (``python -m tuning.predict``), with a Grad-CAM heat map of the evidence."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image
from torch import nn

from modules.checkpoint import (
    decide_labels,
    eval_transform,
    load_classifier,
    model_info,
    positive_index,
    predict_probabilities,
    preprocessing,
    uses_flip_tta,
)
from modules.decode import KEEP_MAX_SIDE, shrink
from modules.files import atomic_write_bytes, atomic_write_json, atomic_write_text
from modules.gradcam import crop_box_in, default_target_layer, grad_cam, to_image_geometry
from modules.nifti import SliceChoice
from modules.scans import read_scan  # the ingest's own rules: the same as training
from modules.sources import DatasetError, display_path, folder_entries, is_hidden, read_limited
from modules.transforms import Preprocessing, to_tensor
from tuning.provenance import versions

CSV_FIELDS = (
    "path",
    "probability",
    "label",
    "heatmap",
    "width",
    "height",
    "error",
)  # + prob_<class>, heatmap_class


def csv_fields(classes: list[str]) -> list[str]:
    """The columns of predictions.csv: ``CSV_FIELDS``, the class of the heat map, one probability per class."""
    return [*CSV_FIELDS, "heatmap_class", *[f"prob_{c}" for c in classes]]


HEAT_ALPHA = 0.6  # opacity of the colour map where the heat is 1; it fades to the plain scan where it is 0


@dataclass(frozen=True)
class Source:
    """One input file: how to read it, or why it cannot be read."""

    path: str  # as shown to the user
    read: Callable[[], bytes] | None = None
    problem: str | None = None


def collect_sources(paths: list[str | Path]) -> list[Source]:
    """The files named or found under the folders named, in order; folders are walked recursively without
    following links (hidden and system files are left out), and a symlink leaving its folder is refused."""
    out: list[Source] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            out += list(_walk(path))
        elif path.is_file():  # named explicitly: read it even through a symlink
            out.append(Source(str(path), read=lambda p=path: read_limited(p)))
        elif path.is_symlink():
            out.append(Source(str(path), problem="broken symlink"))
        elif path.exists():  # a FIFO, socket or device: reading it could block or never end
            out.append(Source(str(path), problem="not a regular file"))
        else:
            out.append(Source(str(path), problem="no such file or folder"))
    return out


def _walk(root: Path) -> Iterator[Source]:
    try:
        entries, _ = folder_entries(root)
    except DatasetError as err:  # the folder itself cannot be listed: one unreadable row, not a failure
        yield Source(display_path(str(root)), problem=str(err).split(": ", 1)[-1])
        return
    for entry in sorted(entries, key=lambda e: e.parts):
        if is_hidden(entry.parts):
            continue
        shown = display_path(str(root.joinpath(*entry.parts)))
        problem = entry.problem and entry.problem.replace("the dataset root", "the given folder")
        yield Source(shown, read=entry.read, problem=problem)


def overlay(pixels: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """An RGB uint8 (H, W, 3) picture: the grayscale scan (H, W) under the 'jet' colour map of ``heat``
    (H, W, in [0, 1]), blended in proportion to the heat so that cold regions show the plain scan."""
    if pixels.shape != heat.shape:
        raise ValueError(f"scan {pixels.shape} and heat map {heat.shape} differ in size")
    # bytes=True: the colour map's uint8 output, a quarter of its float64 one on a large scan
    colour = matplotlib.colormaps["jet"](heat, bytes=True)[..., :3].astype(np.float32)
    alpha = (HEAT_ALPHA * heat.astype(np.float32))[..., None]
    blend = (1.0 - alpha) * pixels.astype(np.float32)[..., None] + alpha * colour
    return np.rint(blend).clip(0, 255).astype(np.uint8)


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buf, format="PNG")
    return buf.getvalue()


def _heatmap_name(n: int, path: str) -> str:
    """``heatmaps/<n>-<the file's stem>[_<frame or slice>].png``, in characters safe on every file system."""
    file, _, part = path.partition("#")
    name = Path(file).stem + (f"_{part}" if part else "")
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")[:60] or "image"
    return f"heatmaps/{n:04d}-{stem}.png"


@dataclass(frozen=True)
class _Model:
    """A loaded classifier and what predicting with it needs: its description (``load_classifier``'s meta),
    evaluation transform, positive class index (None for more classes), classes, preprocessing and the layer
    Grad-CAM explains."""

    network: nn.Module
    meta: dict
    transform: Callable
    pos: int | None
    classes: list[str]
    pre: Preprocessing
    layer: nn.Module


def _load_model(checkpoint: str | Path) -> _Model:
    """Read ``checkpoint`` (``modules.checkpoint.load_classifier``) and derive what prediction needs."""
    network, meta = load_classifier(checkpoint)
    transform, pos, classes = eval_transform(meta), positive_index(meta), list(meta["classes"])
    pre, layer = preprocessing(meta), default_target_layer(network)
    return _Model(network, meta, transform, pos, classes, pre, layer)


def run_prediction(
    checkpoint: str | Path,
    inputs: list[str | Path],
    out_dir: str | Path,
    *,
    threshold: float = 0.5,
    heatmaps: bool = True,
    command: str = "",
    choice: SliceChoice | None = None,
) -> tuple[list[dict], dict]:
    """Label every image of ``inputs``, write ``predictions.csv``, the heat maps and ``predict.json`` into
    ``out_dir``. Returns (rows, meta): the CSV rows, one per image (a DICOM frame, a NIfTI slice of
    ``choice``: ``path#frame-001``; ``probability`` None and ``error`` the reason for a file that cannot be
    read; ``probs`` {class: probability}; ``probability`` the positive class's, None for a model of more
    classes) and the checkpoint's description (``modules.checkpoint.load_classifier``)."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be a probability in [0, 1], got {threshold}")
    model = _load_model(checkpoint)
    sources = collect_sources(inputs)
    if not sources:
        raise ValueError(
            f"no files found in {', '.join(map(str, inputs))}; expected images or folders of images"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for source in sources:
        rows += _predict_source(
            model, len(rows), source, threshold=threshold, heatmaps=heatmaps, out=out, choice=choice
        )
    atomic_write_text(out / "predictions.csv", _csv(rows, model.classes))
    atomic_write_json(
        out / "predict.json", _run_info(model, rows, threshold=threshold, heatmaps=heatmaps, command=command)
    )
    return rows, model.meta


def _predict_source(
    model: _Model, n: int, source: Source, *, threshold: float, heatmaps: bool, out: Path, choice
) -> list[dict]:
    """The CSV rows of one input, one per image it holds, numbered from ``n`` (0-based); their heat maps written
    under ``out`` when ``heatmaps``. A file that cannot be read gives one row with the reason."""
    scan, error = read_scan(source.read, source.problem, choice)
    if scan is None:
        return [dict.fromkeys(CSV_FIELDS, None) | {"path": source.path, "error": error, "probs": None}]
    return [
        _predict_image(
            model,
            n + k,
            f"{source.path}#{image.name}" if image.name else source.path,
            image.pixels,
            threshold=threshold,
            heatmaps=heatmaps,
            out=out,
        )
        for k, image in enumerate(scan.images)
    ]


def _predict_image(
    model: _Model, n: int, path: str, pixels: np.ndarray, *, threshold: float, heatmaps: bool, out: Path
) -> dict:
    """The CSV row of the ``n``-th image (0-based), its heat map written under ``out`` when ``heatmaps``."""
    row = dict.fromkeys(CSV_FIELDS, None) | {"path": path, "error": "", "probs": None}
    shown = shrink(pixels, KEEP_MAX_SIDE)  # what ingest keeps, so the numbers match tuning.evaluate
    probs = predict_probabilities(model.network, [shown], model.transform, flip=uses_flip_tta(model.meta))
    row["probs"] = {c: float(p) for c, p in zip(model.classes, probs[0], strict=True)}
    row["probability"] = None if model.pos is None else float(probs[0, model.pos])
    row["label"] = decide_labels(probs, model.meta, threshold=threshold)[0]
    row["height"], row["width"] = pixels.shape
    if heatmaps:
        explained = model.pos if model.pos is not None else model.classes.index(row["label"])
        row["heatmap_class"] = model.classes[explained]
        cam = grad_cam(model.network, model.transform(to_tensor(shown))[None], model.layer, explained)
        box = crop_box_in(pixels.shape, shown, model.pre)
        heat = to_image_geometry(cam, model.pre, *pixels.shape, box=box)
        row["heatmap"] = _heatmap_name(n, path)
        atomic_write_bytes(out / row["heatmap"], _png(overlay(pixels, heat)))
    return row


def _run_info(model: _Model, rows: list[dict], *, threshold: float, heatmaps: bool, command: str) -> dict:
    """predict.json: the command, the model, the threshold, how the heat maps were made, the counts."""
    return {
        "kind": "predict",
        "command": command,
        "model": model_info(model.meta),
        "threshold": threshold,
        "heatmap": f"Grad-CAM of the {'positive' if model.pos is not None else 'predicted'} class at "
        + ("backbone.layer4" if model.meta["model"] == "resnet50" else "the last conv block's ReLU"),
        "images": len(rows),
        "unreadable": sum(1 for r in rows if r["error"]),
        "versions": versions(),
        "artifacts": {"predictions": "predictions.csv", "heatmaps": "heatmaps/" if heatmaps else None},
    }


def _csv(rows: list[dict], classes: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=csv_fields(classes), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        p, probs = row["probability"], row["probs"] or {}
        cells = {f"prob_{c}": f"{probs[c]:.6f}" if c in probs else "" for c in classes}
        plain = {k: v for k, v in row.items() if k != "probs"}
        writer.writerow({**plain, "probability": "" if p is None else f"{p:.6f}", **cells})
    return buf.getvalue()


def format_table(rows: list[dict], classes: list[str]) -> str:
    """The printed table: path, the probability of every class, the label, the heat map or the problem."""
    width = min(60, max([len(r["path"]) for r in rows] + [4]))
    heads = [f"P({c})" for c in classes]
    cols = [max(8, len(h)) for h in heads]
    label_width = max([8, *[len(c) for c in classes]])
    head = "  ".join(f"{h:>{w}}" for h, w in zip(heads, cols, strict=True))
    lines = [f"{'path':<{width}}  {head}  {'label':<{label_width}}  heat map / problem"]
    for r in rows:
        path = r["path"] if len(r["path"]) <= width else "..." + r["path"][-(width - 3) :]
        if r["error"]:
            dashes = "  ".join(f"{'-':>{w}}" for w in cols)
            lines.append(f"{path:<{width}}  {dashes}  {'-':<{label_width}}  unreadable: {r['error']}")
        else:
            values = "  ".join(f"{r['probs'][c]:>{w}.3f}" for c, w in zip(classes, cols, strict=True))
            lines.append(f"{path:<{width}}  {values}  {r['label']:<{label_width}}  {r['heatmap'] or ''}")
    return "\n".join(lines)
