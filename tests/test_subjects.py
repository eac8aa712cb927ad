"""Patients and volumes as groups: the slices of one patient, which are not near copies of each other, end in
one split and one fold; a groups file gives groups for any format; bad groups files are one clear error."""

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest

from modules.dataset import prepare_data
from modules.dicom import pseudonym
from modules.duplicates import group_duplicates
from modules.nifti import SliceChoice
from modules.phantom_render import render_example
from modules.sources import DatasetError
from tests.clinical_files import dicom_bytes, dicom_phantom_with_volumes, head_volume, nifti_bytes
from tests.helpers import scan, write_image
from tuning import data as data_cli
from tuning.cli import run_main

MIDDLE_3 = SliceChoice("axial", "middle:3")


@pytest.fixture(scope="module")
def mixed_set(tmp_path_factory) -> Path:
    """Per class: 6 phantom DICOM patients of 3 slices (files without extension), 6 PNG pictures, 2 NIfTI volumes
    (3 middle slices each): 30 images."""
    root = tmp_path_factory.mktemp("mixed") / "set"
    dicom_phantom_with_volumes(root, n_per_class=18, size=48, volumes_per_class=2, volume_shape=(40, 48, 20))
    for ci, label in enumerate(("no", "yes")):
        for i in range(6):
            write_image(root / label / f"picture_{i}.png", scan(300 + 10 * ci + i, mass=label == "yes"))
    return root


def test_the_images_of_a_patient_or_volume_share_one_split_and_one_fold(mixed_set):
    for seed in range(4):
        data = prepare_data(mixed_set, seed=seed, choice=MIDDLE_3)
        assert len(data.images.records) == 60
        assert _splits_per_subject(data.subjects, data.splits) == {1}
        for fold in data.cv_folds(3):
            assert _splits_per_subject(fold.subjects, fold.splits) == {1}
    s = data.summary()
    assert s["formats"] == {"DICOM": 36, "NIfTI-1": 12, "PNG": 12} and s["source_files"] == 52
    sub = s["subjects"]
    assert sub["kinds"] == {"patient": 12, "volume": 4} and sub["images_without_subject"] == 12
    assert sub["across_splits"] == 0 and sum(sub["split"].values()) == 16


def test_the_slices_of_a_patient_are_not_copies_so_only_the_patient_joins_them(mixed_set):
    data = prepare_data(mixed_set, seed=0, choice=MIDDLE_3)
    recs = data.images.records
    by_copies = group_duplicates([r.sha256 for r in recs], [r.pixels for r in recs], data.images.labels).group
    patients = {s for s in data.subjects if s.startswith("patient:")}
    for patient in patients:
        members = [i for i, s in enumerate(data.subjects) if s == patient]
        assert len(members) == 3
        assert len({by_copies[i] for i in members}) == 3  # no picture rule joins them
        assert len({data.groups[i] for i in members}) == 1  # the patient does
    assert not any(len({data.subjects[i] for i in c}) > 1 for c in data.dups.clusters)


def test_split_csv_names_each_images_subject_and_never_the_patient_id(mixed_set):
    data = prepare_data(mixed_set, seed=0, choice=MIDDLE_3)
    text = data.split_csv()
    rows = list(csv.DictReader(io.StringIO(text)))
    by_path = {r["path"]: r for r in rows}
    assert by_path["yes/PHANTOM-YES-002/IM0003"]["subject"] == f"patient:{pseudonym('PHANTOM-YES-002')}"
    assert by_path["no/vol-no1.nii.gz#axial-010"]["subject"] == "volume:no/vol-no1.nii.gz"
    assert by_path["no/picture_0.png"]["subject"] == ""
    assert "PHANTOM-YES-002," not in text and ",patient:PHANTOM" not in text  # a pseudonym, not the ID


def test_tuning_data_reports_patients_and_volumes_and_how_they_are_split(mixed_set, capsys):
    assert run_main(data_cli.main, [str(mixed_set), "--slices", "middle:3"]) == 0
    out = capsys.readouterr().out
    assert "images: 60  no: 30  yes: 30  (from 52 files)" in out
    assert "subjects: 16 (patient 12, volume 4) holding 48 images; 12 images without one" in out
    assert "subjects across splits: 0" in out and "NIfTI slices: middle:3 along the axial axis" in out
    assert run_main(data_cli.main, [str(mixed_set), "--slices", "middle:3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["subjects"]["subjects"] == 16
    assert run_main(data_cli.main, [str(mixed_set), "--slices", "half"]) == 2
    assert "error: --slices 'half': expected all, middle, or middle:K" in capsys.readouterr().err


def _splits_per_subject(subjects: list[str], splits: list[str]) -> set[int]:
    seen: dict[str, set[str]] = {}
    for s, split in zip(subjects, splits, strict=True):
        if s:
            seen.setdefault(s, set()).add(split)
    return {len(v) for v in seen.values()}


# ------------------------------------------------------------------------------------------- --groups FILE
def _groups(tmp_path: Path, rows: list[str]) -> Path:
    path = tmp_path / "groups.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def _all_rows(small_set: Path, together: dict[str, str]) -> list[str]:
    """A row for every image of the small set: those of ``together`` in their group, the others alone."""
    paths = sorted(p.relative_to(small_set).as_posix() for p in small_set.rglob("*.*"))
    return ["path,group", *[f"{p},{together.get(p, 'alone-' + p)}" for p in paths]]


def test_a_groups_file_keeps_a_patients_pictures_in_one_split_and_fold(small_set, tmp_path):
    patient = ["yes/y0.png", "yes/y1.png", "yes/y2.png"]
    groups = _groups(
        tmp_path, ["# three slices of one patient", *_all_rows(small_set, dict.fromkeys(patient, "P1"))]
    )
    plain = prepare_data(small_set, seed=0)
    index = [[r.path for r in plain.images.records].index(p) for p in patient]
    assert (
        len({plain.groups[i] for i in index}) == 3
    )  # distinct pictures: nothing joins them without the file
    for seed in range(6):
        data = prepare_data(small_set, seed=seed, groups=groups)
        assert {data.subjects[i] for i in index} == {"group:P1"}
        assert len({data.splits[i] for i in index}) == 1
        for fold in data.cv_folds(2):
            assert len({fold.splits[i] for i in index}) == 1


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda rows: rows[:-2],
            r"2 image\(s\) without a group \(yes/y6.png, yes/y7.png\); expected a row for",
        ),
        (lambda rows: [*rows, "yes/nope.png,P9"], r"yes/nope.png \(line 18\) not among the files of the set"),
        (lambda rows: [*rows, "yes/y0.png,P9"], r"line 18 puts yes/y0.png in group 'P9', line \d+ in"),
        (lambda rows: [*rows, "yes/y0.png,P1,extra"], "line 18 has 3 non-empty cell"),
        (
            lambda rows: [*rows, "yes/y0.png,"],
            r"line 18 has 1 non-empty cell\(s\) of 2; expected two: path,group",
        ),
    ],
    ids=["missing-images", "missing-path", "two-groups", "three-cells", "empty-group"],
)
def test_a_bad_groups_file_is_one_clear_error(small_set, tmp_path, capsys, edit, message):
    groups = _groups(tmp_path, edit(_all_rows(small_set, {})))
    with pytest.raises(DatasetError, match=message):
        prepare_data(small_set, groups=groups)
    assert run_main(data_cli.main, [str(small_set), "--groups", str(groups)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: --groups {groups}: ")


def test_a_missing_groups_file_is_one_clear_error(small_set, tmp_path, capsys):
    assert run_main(data_cli.main, [str(small_set), "--groups", str(tmp_path / "absent.csv")]) == 2
    assert "no such file; expected a CSV of path,group rows" in capsys.readouterr().err


def test_a_groups_file_naming_a_skipped_file_is_a_warning(small_set, tmp_path):
    (small_set / "yes" / "broken.png").write_bytes(b"not a picture")
    groups = _groups(tmp_path, [*_all_rows(small_set, {}), "yes/broken.png,P7"])
    warnings: list[str] = []
    data = prepare_data(small_set, groups=groups, warn=warnings.append)
    assert len(data.images.records) == 16
    assert any("names yes/broken.png, which was skipped (not an image" in w for w in warnings)


def test_a_groups_file_names_every_slice_of_a_volume_by_its_file(small_set, tmp_path):
    (small_set / "yes" / "vol.nii").write_bytes(nifti_bytes(head_volume()))
    groups = _groups(tmp_path, _all_rows(small_set, {"yes/vol.nii": "P1", "yes/y0.png": "P1"}))
    data = prepare_data(small_set, groups=groups, choice=MIDDLE_3)
    mine = [i for i, r in enumerate(data.images.records) if r.source_file in ("yes/vol.nii", "yes/y0.png")]
    assert len(mine) == 4 and {data.subjects[i] for i in mine} == {"group:P1"}
    assert len({data.groups[i] for i in mine}) == 1


def test_one_blanked_patient_id_for_everyone_is_refused_and_a_groups_file_mends_it(tmp_path, capsys):
    root = tmp_path / "anon"
    for ci, label in enumerate(("no", "yes")):
        (root / label).mkdir(parents=True)
        for i in range(10):
            stored = render_example(ci, i, size=48)[0].astype(np.uint16) * 16
            (root / label / f"IM{i:04d}").write_bytes(dicom_bytes(stored, patient="ANONYMOUS"))
    with pytest.raises(
        ValueError, match="every image has the same subject .* give the real groups with --groups"
    ):
        prepare_data(root)
    rows = [f"{label}/IM{i:04d},{label}-patient-{i // 2}" for label in ("no", "yes") for i in range(10)]
    warnings: list[str] = []
    data = prepare_data(root, groups=_groups(tmp_path, rows), warn=warnings.append)
    assert data.summary()["subjects"]["kinds"] == {"group": 10}
    assert any(f"parts the images of patient:{pseudonym('ANONYMOUS')}" in w for w in warnings)
