"""The commands on clinical data: train, evaluate and predict read DICOM series and NIfTI volumes mixed with
pictures, a search's feature cache is built from them, each patient stays on one side, and nothing is written
outside the output folder."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from modules.phantom_render import render_example
from tests.clinical_files import dicom_bytes, dicom_phantom_with_volumes, head_volume, nifti_bytes
from tests.helpers import TINY_SEARCH, search_settings
from tuning import predict as predict_cli
from tuning import train as train_cli
from tuning.cli import run_main
from tuning.evaluation import run_evaluation

TINY_TRAIN = [
    "--model", "cnn", "--crop", "none", "--cnn-depth", "2", "--cnn-width", "8", "--image-size", "32",
    "--resize", "36", "--batch-size", "8", "--max-epochs", "2", "--threads", "2", "--no-progress",
]  # fmt: skip


@pytest.fixture(scope="module")
def dicom_set(tmp_path_factory) -> Path:
    """The phantom as DICOM: 8 patients of 3 slices per class, and one NIfTI volume per class."""
    root = tmp_path_factory.mktemp("dicom") / "set"
    dicom_phantom_with_volumes(root, n_per_class=24, size=64, volumes_per_class=1, volume_shape=(64, 64, 12))
    return root


@pytest.fixture(scope="module")
def trained(dicom_set, tmp_path_factory) -> Path:
    """tuning.train on the DICOM set (two middle slices of each volume); the run folder."""
    base = tmp_path_factory.mktemp("train")
    before = sorted(p.relative_to(dicom_set.parent) for p in dicom_set.parent.rglob("*"))
    out = base / "run"
    args = ["--data", str(dicom_set), "--slices", "middle:2", "--out", str(out), *TINY_TRAIN]
    assert run_main(train_cli.main, args) == 0
    assert sorted(p.relative_to(dicom_set.parent) for p in dicom_set.parent.rglob("*")) == before
    assert [p.name for p in base.iterdir()] == ["run"]  # only --out is written
    return out


def _split_rows(run: Path) -> list[dict]:
    with open(run / "split.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_train_keeps_every_patient_in_one_split_and_reports_them(trained):
    report = json.loads((trained / "report.json").read_text())
    data = report["data"]
    assert data["files"] == 52 and data["source_files"] == 50
    assert (
        data["subjects"]["kinds"] == {"patient": 16, "volume": 2} and data["subjects"]["across_splits"] == 0
    )
    assert data["slices"] == {"axis": "axial", "slices": "middle:2"}
    rows = _split_rows(trained)
    splits_of: dict[str, set[str]] = {}
    for r in rows:
        splits_of.setdefault(r["subject"], set()).add(r["split"])
    assert len(splits_of) == 18 and all(len(v) == 1 for v in splits_of.values())
    assert {r["path"] for r in rows if r["subject"] == "volume:yes/vol-yes0.nii.gz"} == {
        "yes/vol-yes0.nii.gz#axial-005",
        "yes/vol-yes0.nii.gz#axial-006",
    }


def test_evaluate_scores_a_dicom_set_with_intervals_over_its_patients(trained, dicom_set, tmp_path):
    test_dir = tmp_path / "test_split"
    rows = [r for r in _split_rows(trained) if r["split"] == "test" and "#" not in r["path"]]
    for r in rows:
        (test_dir / r["path"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(dicom_set / r["path"], test_dir / r["path"])
    report = run_evaluation(trained / "model.pt", test_dir, tmp_path / "eval", command="test")
    test = report["metrics"]["test"]
    patients = {r["subject"] for r in rows}
    assert test["n"] == len(rows) and report["data"]["subjects"] == len(patients)
    assert test["groups"] == len(patients) < test["n"]  # resampled by patient, not by slice
    assert "groups (copies, patients, volumes)" in test["interval_method"]


def test_evaluate_takes_the_groups_and_slices_of_the_command_line(trained, dicom_set, tmp_path, capsys):
    from tuning import evaluate as evaluate_cli

    target = tmp_path / "two_volumes"
    for label in ("no", "yes"):
        (target / label).mkdir(parents=True)
        shutil.copyfile(dicom_set / label / f"vol-{label}0.nii.gz", target / label / "v.nii.gz")
    groups = tmp_path / "groups.csv"
    groups.write_text("path,group\nno/v.nii.gz,same-patient\nyes/v.nii.gz,same-patient\n")
    base = ["--checkpoint", str(trained / "model.pt"), "--data", str(target)]
    args = [*base, "--slices", "middle:3", "--groups", str(groups), "--out", str(tmp_path / "eval")]
    assert run_main(evaluate_cli.main, args) == 0
    test = json.loads((tmp_path / "eval" / "report.json").read_text())["metrics"]["test"]
    assert test["n"] == 6 and test["groups"] == 1  # both volumes one patient: one group to resample
    assert run_main(evaluate_cli.main, [*base, "--slices", "half", "--out", str(tmp_path / "bad")]) == 2
    assert "error: --slices 'half'" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_predict_labels_every_frame_and_slice_by_name(trained, tmp_path, capsys):
    frames = np.stack([render_example(1, i, size=64)[0] for i in range(3)]).astype(np.uint16) * 16
    scans = tmp_path / "scans"
    scans.mkdir()
    (scans / "cine").write_bytes(dicom_bytes(frames, center=2048, width=4096))
    (scans / "brain.nii").write_bytes(nifti_bytes(head_volume((64, 64, 12), seed=3)))
    (scans / "broken.dcm").write_bytes(dicom_bytes(frames)[:400])
    out = tmp_path / "pred"
    args = ["--checkpoint", str(trained / "model.pt"), str(scans), "--slices", "middle:2", "--out", str(out)]
    assert run_main(predict_cli.main, args) == 0
    with open(out / "predictions.csv", newline="") as fh:
        rows = {Path(r["path"]).name: r for r in csv.DictReader(fh)}
    assert set(rows) == {
        "brain.nii#axial-005", "brain.nii#axial-006", "broken.dcm", "cine#frame-001", "cine#frame-002",
        "cine#frame-003",
    }  # fmt: skip
    assert rows["broken.dcm"]["error"].startswith("DICOM without pixel data")
    labelled = [r for r in rows.values() if not r["error"]]
    assert all(0.0 <= float(r["probability"]) <= 1.0 and (out / r["heatmap"]).is_file() for r in labelled)
    assert rows["cine#frame-002"]["heatmap"].endswith("-cine_frame-002.png")
    assert "5 labelled, 1 unreadable" in capsys.readouterr().out


def test_a_searchs_feature_cache_is_built_from_dicom_images(dicom_set, tmp_path):
    from tuning.backbone import build_cache, search_weights

    s = search_settings(
        "--space", "resnet_stage2", "--data", str(dicom_set), "--weights", "none", "--cache-views", "1",
        "--slices", "middle", "--out", str(tmp_path / "run"), *TINY_SEARCH,
    )  # fmt: skip
    data = s.prepared(split=s.split)
    assert {kind for kind in data.summary()["subjects"]["kinds"]} == {"patient", "volume"}
    spec = s.spec()
    cache = build_cache(s, spec, data, search_weights(spec, s))
    assert cache is not None and len(cache.splits) == len(data.images.records) == 50
    assert list(cache.splits) == data.splits
    # the default refit trains on train + val: those images have training views, the test images none
    assert [i >= 0 for i in cache.train_index] == [sp != "test" for sp in data.splits]


@pytest.mark.slow
def test_a_search_on_dicom_series_refits_and_keeps_patients_whole(ray_local, dicom_set, tmp_path):
    from tuning import search

    run = tmp_path / "search"
    args = [
        "--space", "resnet_stage2", "--data", str(dicom_set), "--weights", "none", "--num-samples", "2",
        "--max-epochs", "4", "--grace-period", "4", "--slices", "middle", "--out", str(run), *TINY_SEARCH,
    ]  # fmt: skip
    assert run_main(search.main, args) == 0
    report = json.loads((run / "report.json").read_text())
    assert report["data"]["subjects"]["kinds"] == {"patient": 16, "volume": 2}
    assert report["data"]["subjects"]["across_splits"] == 0 and report["search"]["cache"]["enabled"]
    assert json.loads((run / "search.json").read_text())["slices"] == "middle"
    assert "patient:" in (run / "split.csv").read_text()
