"""Export a trained classifier (``model.pt``) to run outside this project: ONNX (``torch.onnx.export``, the
``torch.export``-based exporter) or TorchScript (``torch.jit.trace``), with its preprocessing, classes and
provenance described beside it as JSON, and the exported file checked against PyTorch.

The exported graph is the whole network followed by a softmax: input ``image`` (N, 3, S, S) float32, the
normalised tensor the description's steps make of a scan; output ``probabilities`` (N, classes) in the order
of ``classes``. Any batch size N runs. The check runs the written file (onnxruntime for ONNX, ``torch.jit.load``
for TorchScript) and the checkpoint's network in PyTorch on the same sample scans, and reports the largest
absolute difference of a class probability.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from modules.checkpoint import (
    eval_transform,
    file_sha256,
    load_classifier,
    model_info,
    preprocessing,
    uses_flip_tta,
)
from modules.decode import KEEP_MAX_SIDE, shrink
from modules.files import atomic_write_bytes, atomic_write_json
from modules.phantom_render import render_example
from modules.scans import read_scan
from modules.transforms import describe_evaluation, to_tensor
from tuning.prediction import collect_sources
from tuning.provenance import package_version, versions

FORMATS = ("onnx", "torchscript")
INPUT, OUTPUT = "image", "probabilities"
DESCRIPTION_FORMAT = "mri-tune/exported-classifier"
TRACE_BATCH = 2  # the example batch; any other batch size must run the same (checked with the samples)


class Probabilities(nn.Module):
    """A classifier network followed by a softmax: what is exported."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.network(image).float().softmax(dim=1)


def export_model(
    checkpoint: str | Path,
    fmt: str,
    out: str | Path,
    *,
    images: list[str] | None = None,
    samples: int = 8,
    tolerance: float = 1e-4,
    command: str = "",
) -> dict:
    """Export ``checkpoint`` as ``fmt`` to ``out``, check it, write the description ``<out>.json``; returns
    the description (its ``check.max_abs_diff``: the largest probability difference to PyTorch)."""
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if samples < 1 or not tolerance > 0:
        raise ValueError(f"need --samples >= 1 and --tolerance > 0, got {samples}, {tolerance}")
    network, meta = load_classifier(checkpoint)  # read_checkpoint: weights_only=True, one-line refusals
    model = Probabilities(network).eval()
    inputs, source = sample_inputs(meta, images, samples)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    example = inputs[:TRACE_BATCH] if len(inputs) >= TRACE_BATCH else inputs.repeat(TRACE_BATCH, 1, 1, 1)
    atomic_write_bytes(
        out, onnx_bytes(model, example) if fmt == "onnx" else torchscript_bytes(model, example)
    )
    with torch.no_grad():
        expected = model(inputs).numpy()
    got, runtime = run_onnx(out, inputs) if fmt == "onnx" else run_torchscript(out, inputs)
    diff = float(np.abs(got - expected).max())
    description = describe(meta, fmt, out, command=command)
    description["check"] = {
        "runtime": runtime,
        "inputs": source,
        "samples": len(inputs),
        "max_abs_diff": diff,
        "tolerance": tolerance,
        "passed": diff <= tolerance,
    }
    atomic_write_json(description_path(out), description)
    return description


def description_path(out: Path) -> Path:
    return out.with_name(out.name + ".json")


def sample_inputs(meta: dict, images: list[str] | None, samples: int) -> tuple[torch.Tensor, str]:
    """(network inputs (n, 3, S, S), what they are): the given scans, decoded as training decodes them, or
    ``samples`` synthetic phantom slices (with and without a mass) when none is given."""
    transform = eval_transform(meta)
    if images:
        pixels = []
        for src in collect_sources(images):
            scan, problem = read_scan(src.read, src.problem)
            if scan is None:
                raise ValueError(f"--images: {src.path}: {problem}; expected readable images")
            pixels += [shrink(image.pixels, KEEP_MAX_SIDE) for image in scan.images]
        if not pixels:
            raise ValueError(f"--images {' '.join(images)}: no image files found")
        text = f"{len(pixels)} given image(s)"
    else:
        size = preprocessing(meta).resize
        pixels = [render_example(i % 2, i, size=size, seed=0)[0] for i in range(samples)]
        text = f"{samples} synthetic phantom slices of {size} px (modules/phantom_render.py, seed 0)"
    return torch.stack([transform(to_tensor(p)) for p in pixels]), text


def onnx_bytes(model: nn.Module, example: torch.Tensor) -> bytes:
    """The model as an ONNX file, through the ``torch.export``-based exporter (the legacy TorchScript-based one
    is deprecated), with a dynamic batch dimension."""
    try:
        import onnxscript  # noqa: F401  (the exporter's dependency; say so plainly when it is missing)
    except ModuleNotFoundError:
        raise ValueError("ONNX export needs the onnxscript package (pip install onnxscript)") from None
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_shapes={INPUT: {0: torch.export.Dim("batch")}},
            verbose=False,
        )
    return program.model_proto.SerializeToString()


def torchscript_bytes(model: nn.Module, example: torch.Tensor) -> bytes:
    """The model traced to TorchScript. PyTorch marks TorchScript deprecated (in favour of ``torch.export``);
    it is kept for runtimes that load it (LibTorch). The input size is fixed by the preprocessing, so the
    network's size check, which tracing freezes to a constant, holds for every input it will get."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, example)
        torch.jit.save(traced, buf)
    return buf.getvalue()


def run_onnx(path: Path, inputs: torch.Tensor) -> tuple[np.ndarray, str]:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (probs,) = session.run([OUTPUT], {INPUT: inputs.numpy()})
    return probs, f"onnxruntime {onnxruntime.__version__} (CPUExecutionProvider)"


def run_torchscript(path: Path, inputs: torch.Tensor) -> tuple[np.ndarray, str]:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        loaded = torch.jit.load(str(path), map_location="cpu")
        return loaded(inputs).numpy(), f"torch.jit.load (torch {torch.__version__})"


def describe(meta: dict, fmt: str, out: Path, *, command: str) -> dict:
    """The description written beside the exported file: how to feed it, what comes out, where it is from."""
    pre = preprocessing(meta)
    classes = list(meta["classes"])
    info = model_info(meta)
    used = ("onnx", "onnxruntime", "onnxscript") if fmt == "onnx" else ()
    return {
        "format": DESCRIPTION_FORMAT,
        "format_version": 1,
        "command": command,
        "file": {"name": out.name, "format": fmt, "sha256": file_sha256(out), **_file_extra(fmt, out)},
        "input": {
            "name": INPUT,
            "shape": ["batch", 3, pre.image_size, pre.image_size],
            "dtype": "float32",
            "layout": "NCHW",
        },
        "output": {"name": OUTPUT, "shape": ["batch", len(classes)], "classes": classes, "softmax": True},
        "preprocessing": {
            "steps": describe_evaluation(pre),
            "parameters": pre.to_dict(),
            "training_only": "rotation, hflip, intensity and scale are training augmentations: not applied here",
            "test_time_augmentation": "flip: the model's reported predictions are the mean of the probabilities of "
            "the input and of its left-right mirror (run the file on both and average)"
            if uses_flip_tta(meta)
            else "none",
        },
        "classes": classes,
        "positive_class": meta["positive_class"],
        "decision": "two classes: the positive class where its probability reaches a threshold (0.5 in "
        "tuning.predict), else the other; more classes: the most probable one",
        "model": {
            "kind": meta["model"],
            "weights_layout": info["weights_layout"],
            "network_hparams": {k: v for k, v in meta["network_hparams"].items() if k != "weights"},
            "weights_source": info["weights_source"],
            "best_epoch": info["best_epoch"],
        },
        "checkpoint": {"path": info["checkpoint"], "sha256": info["sha256"]},
        "trained_on": info["trained_on"],
        "trained_with": info["versions"],
        "versions": versions(*used),
    }


def _file_extra(fmt: str, out: Path) -> dict:
    if fmt != "onnx":
        return {"exporter": "torch.jit.trace"}
    import onnx

    opsets = {
        o.domain or "ai.onnx": o.version for o in onnx.load(str(out), load_external_data=False).opset_import
    }
    return {
        "exporter": f"torch.onnx.export(dynamo=True), onnxscript {package_version('onnxscript')}",
        "opset": opsets,
    }
