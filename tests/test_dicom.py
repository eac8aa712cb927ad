"""DICOM decoding: grey levels as a viewer shows them (checked against values worked out by hand), frames,
recognition by content, compressed transfer syntaxes, patients, and every bad file as a one-line reason."""

import numpy as np
import pytest
from PIL import Image

from modules.dicom import pseudonym
from modules.scans import decode_scan, read_scan
from tests.clinical_files import dicom_bytes, pydicom_file


def quadrants(a: int, b: int, c: int, d: int, size: int = 16) -> np.ndarray:
    """A size x size image of four quadrants: a (top left), b (top right), c (bottom left), d (bottom right)."""
    img = np.empty((size, size), np.uint16)
    h = size // 2
    img[:h, :h], img[:h, h:], img[h:, :h], img[h:, h:] = a, b, c, d
    return img


def corners(pixels: np.ndarray) -> list[int]:
    h = pixels.shape[0] // 2
    return [int(pixels[0, 0]), int(pixels[0, h]), int(pixels[h, 0]), int(pixels[h, h])]


# Stored 0, 100, 200, 300 with slope 2 and intercept -100 are the values -100, 100, 300, 500. The LINEAR window
# of centre 200 and width 401 (DICOM PS3.3 C.11.2.1.2) runs from c - 0.5 - (w - 1) / 2 = -0.5 to 399.5 and maps
# x to ((x - (c - 0.5)) / (w - 1) + 0.5) * 255: -100 -> 0 (below), 100 -> (-99.5 / 400 + 0.5) * 255 = 64.07 -> 64,
# 300 -> (100.5 / 400 + 0.5) * 255 = 191.57 -> 192, 500 -> 255 (above).
WINDOWED = [0, 64, 192, 255]


def test_the_modality_transform_and_the_file_window_give_the_hand_computed_grey_levels():
    scan = decode_scan(
        dicom_bytes(quadrants(0, 100, 200, 300), slope=2, intercept=-100, center=200, width=401)
    )
    assert scan.format == "DICOM" and scan.mode == "MONOCHROME2" and scan.intensity == "DICOM VOI window"
    assert corners(scan.images[0].pixels) == WINDOWED


def test_monochrome1_is_inverted():
    data = dicom_bytes(
        quadrants(0, 100, 200, 300), photometric="MONOCHROME1", slope=2, intercept=-100, center=200, width=401
    )
    scan = decode_scan(data)
    assert corners(scan.images[0].pixels) == [255 - v for v in WINDOWED] == [255, 191, 63, 0]
    assert scan.intensity == "DICOM VOI window, inverted (MONOCHROME1)"


def test_without_a_window_the_percentile_window_spans_the_values():
    # four equal quadrants: the 0.5th and 99.5th percentiles are the lowest and highest values, -100 and 500, so
    # 100 -> 200 / 600 * 255 = 85 and 300 -> 400 / 600 * 255 = 170
    scan = decode_scan(dicom_bytes(quadrants(0, 100, 200, 300), slope=2, intercept=-100))
    assert corners(scan.images[0].pixels) == [0, 85, 170, 255]
    assert scan.intensity == "percentile window"


def test_an_unusable_window_falls_back_to_the_percentile_window():
    scan = decode_scan(dicom_bytes(quadrants(0, 100, 200, 300), center=100, width=0))
    assert corners(scan.images[0].pixels) == [0, 85, 170, 255]
    assert scan.intensity.startswith("percentile window (the file's window is unusable")


def test_a_voi_lut_maps_through_its_entries_to_the_range_they_span():
    import io

    import pydicom
    from pydicom.dataset import Dataset

    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(quadrants(0, 100, 200, 300))))
    lut = Dataset()
    lut.add_new(0x00283002, "US", [400, 0, 16])  # LUT Descriptor: 400 entries from input 0, 16 bits
    lut.add_new(0x00283006, "US", [10 * i for i in range(400)])  # LUT Data: input i -> 10 i, up to 3990
    ds.VOILUTSequence = [lut]
    buf = io.BytesIO()
    ds.save_as(buf)
    scan = decode_scan(buf.getvalue())
    # 0, 100, 200, 300 -> 0, 1000, 2000, 3000 of 0..3990 -> 0, 63.9, 127.8, 191.7 of 255
    assert scan.intensity == "DICOM VOI LUT" and corners(scan.images[0].pixels) == [0, 64, 128, 192]


def test_pydicoms_mr_image_matches_the_window_formula_on_its_stored_values():
    import pydicom

    path = pydicom_file("MR_small.dcm")
    ds = pydicom.dcmread(path)
    x = ds.pixel_array.astype(np.float64)  # no rescale in this file: stored values are the modality values
    c, w = float(ds.WindowCenter), float(ds.WindowWidth)
    expected = np.rint(np.clip((x - (c - 0.5)) / (w - 1) + 0.5, 0, 1) * 255)
    got = decode_scan(path.read_bytes()).images[0].pixels.astype(np.float64)
    assert np.abs(got - expected).max() <= 1 and (got == expected).mean() > 0.99


def test_a_multi_frame_file_gives_one_image_per_frame_and_leaves_blank_frames_out():
    frames = np.stack([quadrants(0, 100, 200, 300), np.full((16, 16), 50), quadrants(300, 200, 100, 0)])
    scan = decode_scan(dicom_bytes(frames.astype(np.uint16), center=150, width=301))
    assert [im.name for im in scan.images] == ["frame-001", "frame-003"]
    assert scan.blank == 1 and scan.unit == "file"
    assert corners(scan.images[1].pixels) == corners(scan.images[0].pixels)[::-1]


def test_pixels_are_made_square_by_the_pixel_spacing():
    scan = decode_scan(dicom_bytes(quadrants(0, 100, 200, 300, size=32), spacing=(2.0, 1.0)))
    assert scan.images[0].pixels.shape == (64, 32)  # rows 2 mm apart: twice as many rows at 1 mm


def test_recognised_by_content_with_any_name_and_without_the_preamble(tmp_path):
    stored = quadrants(0, 100, 200, 300)
    with_preamble = dicom_bytes(stored, center=150, width=301)
    bare = dicom_bytes(stored, center=150, width=301, preamble=False)
    assert bare[128:132] != b"DICM" and with_preamble[128:132] == b"DICM"
    for name, data in [("IM0001", with_preamble), ("scan.jpg", with_preamble), ("old_export", bare)]:
        (tmp_path / name).write_bytes(data)
        scan, reason = read_scan(lambda n=name: (tmp_path / n).read_bytes())
        assert reason == "" and scan.format == "DICOM", name
        assert np.array_equal(scan.images[0].pixels, decode_scan(with_preamble).images[0].pixels)


def test_a_preamble_holding_a_tiff_header_is_still_dicom():
    data = pydicom_file("MR_small.dcm").read_bytes()
    assert data[:4] == b"II*\x00"  # pydicom's file is also a TIFF: the DICOM reading must win
    assert decode_scan(data).format == "DICOM"


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_bigendian.dcm", "MR_small_jp2klossless.dcm"])
def test_other_transfer_syntaxes_give_the_same_image(name):
    from pydicom import dcmread
    from pydicom.pixels import get_decoder

    ts = dcmread(pydicom_file(name)).file_meta.TransferSyntaxUID
    if ts.is_compressed and not get_decoder(ts).is_available:
        pytest.skip(f"no installed decoder for {ts.name}")
    reference = decode_scan(pydicom_file("MR_small.dcm").read_bytes()).images[0].pixels
    assert np.array_equal(decode_scan(pydicom_file(name).read_bytes()).images[0].pixels, reference)


def test_a_transfer_syntax_no_installed_decoder_reads_is_a_reason_naming_what_would():
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGLSLossless

    scan, reason = read_scan(lambda: pydicom_file("MR_small_jpeg_ls_lossless.dcm").read_bytes())
    if get_decoder(JPEGLSLossless).is_available:
        assert scan is not None and scan.images[0].pixels.shape == (64, 64)
        return
    assert scan is None
    assert reason.startswith("DICOM pixel data compressed as JPEG-LS Lossless Image Compression")
    assert "no installed decoder reads; install one of:" in reason and "pylibjpeg" in reason


def test_colour_becomes_grey_by_luminance_frame_by_frame():
    import pydicom

    path = pydicom_file("SC_rgb_rle_2frame.dcm")
    scan = decode_scan(path.read_bytes())
    assert [im.name for im in scan.images] == ["frame-001", "frame-002"]
    rgb = pydicom.dcmread(path).pixel_array[0]
    pil = np.asarray(Image.fromarray(rgb, "RGB").convert("L"), dtype=np.int16)
    assert np.abs(scan.images[0].pixels.astype(np.int16) - pil).max() <= 1


def test_the_patient_is_a_pseudonym_of_the_patient_id_else_of_the_study():
    stored = quadrants(0, 100, 200, 300)
    named = decode_scan(dicom_bytes(stored, patient="MRN 0042"))
    assert named.subject == f"patient:{pseudonym('MRN 0042')}" and "0042" not in named.subject
    assert (
        decode_scan(dicom_bytes(stored, patient=None, study="1.2.3")).subject == f"study:{pseudonym('1.2.3')}"
    )
    assert decode_scan(dicom_bytes(stored, patient="", study=None)).subject == ""


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (
            lambda: pydicom_file("MR_truncated.dcm").read_bytes(),
            "cannot decode DICOM pixel data (ValueError: The ",
        ),
        (
            lambda: pydicom_file("MR_small.dcm").read_bytes()[:700],
            "DICOM without pixel data (MR Image Storage)",
        ),
        (
            lambda: pydicom_file("rtstruct.dcm").read_bytes(),
            "DICOM without pixel data (RT Structure Set Storage)",
        ),
        (
            lambda: pydicom_file("dicomdirtests/DICOMDIR").read_bytes(),
            "a DICOMDIR (the index of a DICOM media",
        ),
        (lambda: dicom_bytes(np.full((16, 16), 7, np.uint16)), "blank DICOM: every pixel has one value"),
        (
            lambda: dicom_bytes(np.zeros((8, 8), np.uint16) + np.eye(8, dtype=np.uint16)),
            "image too small: 8x8",
        ),
    ],
    ids=["truncated-pixel-data", "truncated-header", "no-pixel-data", "dicomdir", "blank", "too-small"],
)
def test_a_bad_dicom_is_a_reason_never_an_exception(data, reason):
    scan, got = read_scan(data)
    assert scan is None and got.startswith(reason), got
    assert "\n" not in got and "expected" in got
