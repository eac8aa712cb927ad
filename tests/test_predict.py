"""tuning.predict and modules.gradcam: labels, CSV, heat maps at each image's size, unreadable files listed."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from modules.checkpoint import eval_transform, load_classifier, preprocessing
from modules.gradcam import default_target_layer, grad_cam, to_image_geometry
from modules.networks import ResNet50Classifier, build_network
from modules.phantom import make_phantom
from modules.phantom_render import render_example
from modules.transforms import Preprocessing, to_tensor
from tuning import predict, prediction
from tuning.cli import run_main


@pytest.fixture(scope="module")
def run(tiny_run):
    return tiny_run


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _inputs(run, root: Path) -> tuple[Path, Path]:
    """root/scans: 3 test-split scans (one in a sub-folder), a resized non-square RGB JPEG copy, a broken file,
    a symlink leaving the folder, a hidden file; plus a lone file outside it. Returns (folder, lone file)."""
    scans = root / "scans"
    recs = [run.data.images.records[i] for i in run.data.indices("test")][:3]
    for k, rec in enumerate(recs):
        target = scans / ("deeper" if k == 0 else "") / Path(rec.path).name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((run.phantom / rec.path).read_bytes())
    Image.fromarray(recs[1].pixels).convert("RGB").resize((80, 56)).save(scans / "wide.jpg", format="JPEG")
    (scans / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (scans / ".DS_Store").write_bytes(b"\0" * 10)
    secret = root / "outside.png"
    secret.write_bytes((run.phantom / recs[0].path).read_bytes())
    os.symlink(secret, scans / "escape.png")
    lone = root / "lone.png"
    Image.fromarray(recs[2].pixels).resize((48, 40)).save(lone)
    return scans, lone


def test_predict_writes_a_row_and_a_heat_map_per_image(run, tmp_path, capsys):
    scans, lone = _inputs(run, tmp_path)
    out = tmp_path / "out"
    argv = ["--checkpoint", str(run.checkpoint), str(scans), str(lone), str(tmp_path / "missing.png")]
    assert run_main(predict.main, [*argv, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "P(yes)" in printed and "unreadable" in printed and "5 labelled, 3 unreadable" in printed

    rows = _read_csv(out / "predictions.csv")
    assert sum("/deeper/" in r["path"] for r in rows) == 1  # folders are walked recursively
    by_name = {Path(r["path"]).name: r for r in rows}
    assert len(rows) == 8 and ".DS_Store" not in by_name  # 5 images, broken, escape, missing
    assert "not an image" in by_name["broken.png"]["error"]
    assert "outside the given folder" in by_name["escape.png"]["error"]
    assert by_name["missing.png"]["error"] == "no such file or folder"
    readable = [r for r in rows if not r["error"]]
    assert len(readable) == 5
    for r in readable:
        p = float(r["probability"])
        assert 0.0 <= p <= 1.0 and r["label"] == ("yes" if p >= 0.5 else "no")
        with Image.open(out / r["heatmap"]) as heat, Image.open(r["path"]) as scan:
            assert heat.size == scan.size == (int(r["width"]), int(r["height"])) and heat.mode == "RGB"
    assert by_name["wide.jpg"]["width"] == "80" and by_name["lone.png"]["height"] == "40"
    for r in rows:
        if r["error"]:
            assert r["probability"] == "" and r["heatmap"] == ""
    info = json.loads((out / "predict.json").read_text())
    assert {"code", "torch", "numpy", "pillow"} <= set(info["versions"])  # what made these numbers


def test_threshold_decides_the_label_and_overwrite_is_refused(run, tmp_path, capsys):
    scans, _ = _inputs(run, tmp_path)
    rows, meta = prediction.run_prediction(
        run.checkpoint, [scans], tmp_path / "a", threshold=0.0, heatmaps=False
    )
    assert meta["positive_class"] == "yes"
    assert {r["label"] for r in rows if not r["error"]} == {"yes"}
    rows, _ = prediction.run_prediction(
        run.checkpoint, [scans], tmp_path / "b", threshold=1.0, heatmaps=False
    )
    assert {r["label"] for r in rows if not r["error"]} == {"no"}
    assert not (tmp_path / "b" / "heatmaps").exists()
    args = ["--checkpoint", str(run.checkpoint), str(scans), "--out", str(tmp_path / "a")]
    assert run_main(predict.main, args) == 2
    assert "already holds a predictions.csv" in capsys.readouterr().err
    assert run_main(predict.main, [*args, "--threshold", "1.5", "--overwrite"]) == 2
    assert "threshold must be a probability" in capsys.readouterr().err


def test_only_unreadable_files_is_not_a_crash(run, tmp_path, capsys):
    (tmp_path / "junk.png").write_bytes(b"")
    os.mkfifo(tmp_path / "pipe")  # would block a reader forever
    inputs = [str(tmp_path / "junk.png"), str(tmp_path / "pipe")]
    args = ["--checkpoint", str(run.checkpoint), *inputs, "--out", str(tmp_path / "o")]
    assert run_main(predict.main, args) == 1
    captured = capsys.readouterr()
    assert "empty file" in captured.out and "Traceback" not in captured.err
    errors = [r["error"] for r in _read_csv(tmp_path / "o" / "predictions.csv")]
    assert errors == ["empty file (0 bytes)", "not a regular file"]


# ----------------------------------------------------------------------------- modules.gradcam
def test_grad_cam_of_the_cnn_and_the_resnet50():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 64, 64)
    cnn = build_network("cnn", depth=2, width=8).eval()
    resnet = ResNet50Classifier().eval()
    assert default_target_layer(cnn) is cnn.features[7]  # the ReLU of the second (last) block
    assert default_target_layer(resnet) is resnet.backbone.layer4
    for net in (cnn, resnet):
        before = {k: v.clone() for k, v in net.state_dict().items()}
        cam = grad_cam(net, x, default_target_layer(net), 1)
        assert cam.shape == (64, 64) and cam.dtype == np.float32
        assert cam.min() >= 0.0 and cam.max() <= 1.0
        assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
        assert not any(p.grad is not None for p in net.parameters())
    with torch.no_grad():  # works inside no_grad and with frozen parameters too
        for p in cnn.parameters():
            p.requires_grad_(False)
        assert grad_cam(cnn, x, cnn.features[7], 0).shape == (64, 64)
    with pytest.raises(ValueError, match="class_index"):
        grad_cam(cnn, x, cnn.features[7], 2)
    with pytest.raises(ValueError, match="one image"):
        grad_cam(cnn, x.expand(2, -1, -1, -1), cnn.features[2], 0)
    with pytest.raises(ValueError, match="did not run"):
        grad_cam(cnn, x, resnet.backbone.layer4, 0)


def test_heat_map_returns_to_the_image_geometry():
    pre = Preprocessing(image_size=32, resize=40)
    cam = np.ones((32, 32), dtype=np.float32)
    heat = to_image_geometry(cam, pre, 100, 60)
    assert heat.shape == (100, 60)
    assert heat[50, 30] == pytest.approx(1.0) and heat[0, 0] == pytest.approx(
        0.0
    )  # the crop's border: unseen
    with pytest.raises(ValueError, match="expected a"):
        to_image_geometry(np.ones((8, 8)), pre, 10, 10)
    # with the brain crop the map covers the head's box only, wherever the head sits in the scan
    from modules.gradcam import crop_box_in
    from tests.helpers import scan

    cropped = Preprocessing(image_size=32, resize=40, crop="brain")
    pixels = np.zeros((120, 200), np.uint8)
    pixels[10:74, 120:184] = scan(4, size=64)  # the head's disc: rows ~15-69, columns ~125-179
    shown = pixels[::2, ::2]  # what the network saw may be a downscaled copy
    box = crop_box_in(pixels.shape, shown, cropped)
    heat = to_image_geometry(cam, cropped, 120, 200, box=box)
    assert heat[42, 152] == pytest.approx(1.0)  # the head's centre
    assert heat[:, :100].max() == 0.0 and heat[100:, :].max() == 0.0  # away from the head: nothing
    assert crop_box_in(pixels.shape, shown, pre) is None
    scan = (np.arange(12, dtype=np.uint8) * 20).reshape(3, 4)
    cold = prediction.overlay(scan, np.zeros((3, 4), dtype=np.float32))  # no heat: the plain scan, in RGB
    assert cold.shape == (3, 4, 3) and all(np.array_equal(cold[..., c], scan) for c in range(3))
    hot = prediction.overlay(scan, np.ones((3, 4), dtype=np.float32))
    assert not np.array_equal(hot[..., 0], hot[..., 2])  # coloured where the heat is high


# ----------------------------------------------------------------------------- does the heat sit on the mass?
GRADCAM_RUN = {  # found by a sweep: a depth-2 CNN, or 64 px inputs, did not learn the phantom in 50 epochs
    "model": "cnn",
    "cnn_depth": 3,
    "cnn_width": 16,
    "image_size": 32,
    "resize": 32,
    "rotation": 0.0,
    "dropout": 0.1,
    "lr": 3e-3,
    "batch_size": 16,
    "max_epochs": 50,
    "patience": 50,
    "threads": 2,
}


@pytest.mark.slow
def test_grad_cam_is_brighter_over_the_mass(tmp_path):
    from scipy import ndimage

    from modules.dataset import prepare_data
    from tuning.config import TrainConfig
    from tuning.training import run_training

    seed, size = 2, 64
    data = prepare_data(make_phantom(tmp_path / "phantom", n_per_class=200, size=size, seed=seed), seed=0)
    report = run_training(TrainConfig.from_dict(GRADCAM_RUN), data, tmp_path / "run", progress=False)
    network, meta = load_classifier(tmp_path / "run" / "model.pt")
    transform, pre, layer = eval_transform(meta), preprocessing(meta), default_target_layer(network)
    inside, outside = [], []
    for i in data.indices("test"):
        rec = data.images.records[i]
        if rec.label != "yes":
            continue
        image, mask = render_example(1, int(Path(rec.path).stem.split("_")[1]), size=size, seed=seed)
        assert np.array_equal(image, rec.pixels)
        head = ndimage.binary_fill_holes(image > 30)  # the head: everything inside the bright skull ring
        cam = grad_cam(network, transform(to_tensor(rec.pixels))[None], layer, 1)
        heat = to_image_geometry(cam, pre, size, size)
        inside.append(float(heat[mask].mean()))
        outside.append(float(heat[head & ~mask].mean()))
    test = report["metrics"]["test"]
    print(
        f"\nGrad-CAM over {len(inside)} test tumour images: mean heat inside the mass {np.mean(inside):.3f}, "
        f"over the rest of the head {np.mean(outside):.3f} (ratio {np.mean(inside) / np.mean(outside):.2f}; "
        f"inside > outside in {sum(a > b for a, b in zip(inside, outside, strict=True))} images); model test accuracy "
        f"{test['accuracy']:.2f}, AUC {test['auroc']:.2f}"
    )
    assert np.mean(inside) > np.mean(outside)
