"""Bad clinical files through the commands: each a named skip (or, under --strict, one error) that says what
was found and what was expected; never a traceback, and nothing written outside the output folder."""

import gzip
import shutil

import numpy as np
import pytest

from tests.clinical_files import head_volume, nifti_bytes, pydicom_file
from tuning import data as data_cli
from tuning import train as train_cli
from tuning.cli import run_main


def _jpeg_ls_reason() -> str:
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGLSLossless

    if get_decoder(JPEGLSLossless).is_available:
        pytest.skip("a JPEG-LS decoder is installed here: the file is read, not skipped")
    return "DICOM pixel data compressed as JPEG-LS Lossless Image Compression (1.2.840.10008.1.2.4.80), which"


BAD_FILES = {  # name in yes/ -> (bytes, the start of the reason)
    "IM_truncated": (lambda: pydicom_file("MR_truncated.dcm").read_bytes(), "cannot decode DICOM pixel data"),
    "structure_set": (
        lambda: pydicom_file("rtstruct.dcm").read_bytes(),
        "DICOM without pixel data (RT Struct",
    ),
    "DICOMDIR": (lambda: pydicom_file("dicomdirtests/DICOMDIR").read_bytes(), "a DICOMDIR (the index of a"),
    "fmri.nii.gz": (
        lambda: gzip.compress(nifti_bytes(np.ones((16, 16, 8, 5), np.float32))),
        "a 4-D NIfTI of 16x16x8x5 voxels (a time series or several volumes); expected one 3-D volume",
    ),
    "cut.nii": (lambda: nifti_bytes(head_volume())[:4000], "truncated or corrupt NIfTI data"),
}


@pytest.fixture
def clinical_bad_set(small_set):
    for name, (data, _) in BAD_FILES.items():
        (small_set / "yes" / name).write_bytes(data())
    return small_set


def test_each_bad_clinical_file_is_a_named_skip(clinical_bad_set, capsys):
    assert run_main(data_cli.main, [str(clinical_bad_set)]) == 0
    err = capsys.readouterr().err.splitlines()
    for name, (_, reason) in BAD_FILES.items():
        assert any(line.startswith(f"warning: skipped yes/{name}: {reason}") for line in err), name
    assert not any("Traceback" in line for line in err)


def test_an_unsupported_transfer_syntax_is_skipped_and_refused_under_strict(small_set, capsys):
    reason = _jpeg_ls_reason()
    shutil.copyfile(pydicom_file("MR_small_jpeg_ls_lossless.dcm"), small_set / "yes" / "IM0001")
    assert run_main(data_cli.main, [str(small_set)]) == 0
    assert f"warning: skipped yes/IM0001: {reason}" in capsys.readouterr().err
    assert run_main(data_cli.main, [str(small_set), "--strict"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {small_set}: yes/IM0001: {reason}")
    assert err[0].endswith("(--strict refuses bad files)")


def test_train_on_a_set_with_bad_clinical_files_writes_only_its_run_folder(clinical_bad_set, tmp_path):
    shutil.copyfile(pydicom_file("MR_small.dcm"), clinical_bad_set / "no" / "IM0001")
    (clinical_bad_set / "no" / "head.nii.gz").write_bytes(gzip.compress(nifti_bytes(head_volume())))
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    out = tmp_path / "run"
    args = ["--data", str(clinical_bad_set), "--slices", "middle", "--out", str(out), "--model", "cnn"]
    args += ["--max-epochs", "1", "--image-size", "32", "--resize", "36", "--cnn-depth", "2", "--no-progress"]
    assert run_main(train_cli.main, args) == 0
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert [p for p in after if p not in before and p.parts[0] != "run"] == []
    split = (out / "split.csv").read_text()
    assert "no/IM0001," in split and "no/head.nii.gz#axial-010," in split
