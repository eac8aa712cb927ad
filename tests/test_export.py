"""``python -m tuning.export``: the tiny CNN exported to ONNX and TorchScript, run by onnxruntime and
torch.jit.load against PyTorch; its description followed step by step by code that is not ours gives the
same probabilities; bad checkpoints and an existing file are refused with one line."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import onnxruntime
import pytest
import torch
from PIL import Image

from modules.checkpoint import eval_transform, file_sha256, load_classifier, predict_probabilities
from modules.phantom_render import render_example
from tuning import export, model_export
from tuning.cli import run_main


def run_export(argv: list[str]) -> tuple[int, list[str], str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run_main(export.main, argv)
    return code, out.getvalue().strip().splitlines(), err.getvalue()


@pytest.fixture(scope="module")
def onnx_export(tiny_run, tmp_path_factory):
    path = tmp_path_factory.mktemp("export") / "model.onnx"
    code, lines, err = run_export(["--checkpoint", str(tiny_run.checkpoint), "--out", str(path)])
    assert code == 0, err
    return path, lines


def test_onnx_export_runs_in_onnxruntime_like_pytorch(onnx_export, tiny_run):
    path, lines = onnx_export
    last = lines[-1]
    assert last.startswith("max_abs_diff=")
    assert float(last.split("=")[1]) < 1e-5
    d = json.loads(model_export.description_path(path).read_text())
    assert d["check"]["runtime"].startswith("onnxruntime") and d["check"]["passed"]
    assert d["check"]["max_abs_diff"] == pytest.approx(float(last.split("=")[1]), rel=1e-2, abs=1e-12)
    assert d["file"]["sha256"] == file_sha256(path) and d["file"]["opset"]["ai.onnx"] >= 17
    assert d["classes"] == ["no", "yes"] and d["positive_class"] == "yes"
    assert d["checkpoint"]["sha256"] == file_sha256(tiny_run.checkpoint)
    assert {"code", "torch", "onnx", "onnxruntime", "onnxscript"} <= set(d["versions"])
    # any batch size runs; the graph ends in a softmax
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    size = d["input"]["shape"][-1]
    (probs,) = session.run(["probabilities"], {"image": np.random.default_rng(0).normal(size=(5, 3, size, size)).astype(np.float32)})  # fmt: skip
    assert probs.shape == (5, 2) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)


def described_input(d: dict, pixels: np.ndarray) -> np.ndarray:
    """Follow the description's steps with PIL and NumPy (not the project's transform): (1, 3, S, S)."""
    steps = {s["op"]: s for s in d["preprocessing"]["steps"]}
    assert "crop_to_head" not in steps  # the tiny run trained on whole scans
    w, h = steps["resize"]["size"]
    img = Image.fromarray(pixels).resize((w, h), Image.Resampling.BILINEAR)  # PIL's bilinear is antialiased
    side = steps["center_crop"]["size"][0]
    top, left = (h - side) // 2, (w - side) // 2
    x = np.asarray(img, dtype=np.float32)[top : top + side, left : left + side] / 255.0
    x = np.repeat(x[None], 3, axis=0)
    mean, std = (np.asarray(steps["normalize"][k], dtype=np.float32)[:, None, None] for k in ("mean", "std"))
    return ((x - mean) / std)[None].astype(np.float32)


def test_the_description_is_enough_to_use_the_exported_model(onnx_export, tiny_run):
    """A runtime that knows only the JSON: its probabilities match tuning's own pipeline on fresh scans."""
    path, _ = onnx_export
    d = json.loads(model_export.description_path(path).read_text())
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    network, meta = load_classifier(tiny_run.checkpoint)
    for i in range(4):
        pixels = render_example(i % 2, 100 + i, size=80, seed=3)[0]
        (outside,) = session.run([d["output"]["name"]], {d["input"]["name"]: described_input(d, pixels)})
        ours = predict_probabilities(network, [pixels], eval_transform(meta))
        assert np.abs(outside - ours).max() < 0.01, (outside, ours)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
def test_torchscript_export_runs_like_pytorch(tiny_run, tmp_path):
    path = tmp_path / "model.ts"
    images = tiny_run.write_split("test", tmp_path / "scans")
    argv = ["--checkpoint", str(tiny_run.checkpoint), "--format", "torchscript", "--out", str(path), "--images", str(images)]  # fmt: skip
    code, lines, err = run_export(argv)
    assert code == 0, err
    assert lines[-1].startswith("max_abs_diff=") and float(lines[-1].split("=")[1]) < 1e-5
    d = json.loads(model_export.description_path(path).read_text())
    assert d["check"]["inputs"] == f"{len(tiny_run.data.indices('test'))} given image(s)"
    loaded = torch.jit.load(str(path))
    assert loaded(torch.zeros(3, 3, 32, 32)).shape == (3, 2)


def test_a_failed_check_is_exit_1_with_the_difference_last(tiny_run, tmp_path, monkeypatch):
    real = model_export.run_torchscript
    monkeypatch.setattr(model_export, "run_torchscript", lambda p, x: (real(p, x)[0] + 0.01, "perturbed"))
    argv = [
        "--checkpoint",
        str(tiny_run.checkpoint),
        "--format",
        "torchscript",
        "--out",
        str(tmp_path / "m.ts"),
    ]
    code, lines, _ = run_export(argv)
    assert code == 1
    assert "FAILED" in lines[-2] and lines[-1] == "max_abs_diff=0.01"


@pytest.mark.parametrize("bad", ["state_dict", "text", "missing"])
def test_a_bad_checkpoint_is_refused_with_one_line(tmp_path, bad):
    ckpt = tmp_path / "model.pt"
    if bad == "state_dict":
        torch.save(torch.nn.Linear(2, 2).state_dict(), ckpt)
    elif bad == "text":
        ckpt.write_text("not a checkpoint")
    code, lines, err = run_export(["--checkpoint", str(ckpt), "--out", str(tmp_path / "out" / "m.onnx")])
    assert code == 2 and lines == []
    assert len(err.strip().splitlines()) == 1 and err.startswith(f"error: checkpoint {ckpt}")
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_an_existing_file_is_not_replaced(onnx_export, tiny_run):
    path, _ = onnx_export
    before = path.read_bytes()
    code, _, err = run_export(["--checkpoint", str(tiny_run.checkpoint), "--out", str(path)])
    assert code == 2 and "exists; choose another --out or pass --overwrite" in err
    assert path.read_bytes() == before
