"""NIfTI decoding: slices along a chosen axis after turning the volume to its canonical orientation, named by
volume and index, one contrast per volume, square pixels, and every bad file as a one-line reason."""

import gzip

import numpy as np
import pytest

from modules.nifti import SliceChoice
from modules.scans import decode_scan, read_scan
from tests.clinical_files import head_volume, nifti_bytes

RAS = np.eye(4)
LPS = np.diag([-1.0, -1.0, 1.0, 1.0])  # the DICOM convention: x to the patient's left, y posterior
RAS_FEET_FIRST = np.diag([1.0, 1.0, -1.0, 1.0])  # slices stored from the top of the head down


def marked_volume() -> np.ndarray:
    """A head in RAS+ voxel order with a bright cube at the patient's right (high x), anterior (high y), large
    enough (1.3% of the voxels) to be the only thing at the top of the percentile window."""
    vol = head_volume()
    vol[24:32, 30:38, 6:14] = 3000
    return vol


def axial(data: bytes, slices: str = "all") -> dict[str, np.ndarray]:
    return {im.name: im.pixels for im in decode_scan(data, SliceChoice("axial", slices)).images}


def test_axial_slices_are_shown_radiologically_whatever_the_voxel_order():
    vol = marked_volume()
    ras = axial(nifti_bytes(vol, RAS))
    lps = axial(nifti_bytes(vol[::-1, ::-1, :].copy(), LPS))  # the same anatomy, stored the other way round
    assert ras.keys() == lps.keys() and all(np.array_equal(ras[k], lps[k]) for k in ras)
    image = ras["axial-010"]
    assert image.shape == (48, 40)  # rows: anterior to posterior (y), columns: right to left (x)
    rows, cols = np.nonzero(image == 255)
    # x 24..31 of 40 (the right) are columns 8..15 from the left; y 30..37 of 48 (the front) rows 10..17 from the top
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (10, 17, 8, 15)


def test_a_slice_is_named_by_its_index_in_the_files_own_voxel_order():
    vol = marked_volume()
    ras = axial(nifti_bytes(vol, RAS))
    flipped = axial(nifti_bytes(vol[:, :, ::-1].copy(), RAS_FEET_FIRST))
    n = vol.shape[2]
    for k in (3, 10, 15):
        assert np.array_equal(ras[f"axial-{k:03d}"], flipped[f"axial-{n - 1 - k:03d}"])


def test_slice_choices_all_middle_and_middle_k():
    vol = head_volume()  # 20 axial slices, the ends of the field of view empty
    data = nifti_bytes(vol)
    flat = [k for k in range(20) if vol[:, :, k].min() == vol[:, :, k].max()]
    every = decode_scan(data, SliceChoice("axial", "all"))
    assert 0 < len(flat) < 10 and every.blank == len(flat) and every.unit == "volume"
    assert [im.name for im in every.images] == [f"axial-{k:03d}" for k in range(20) if k not in flat]
    assert [im.name for im in decode_scan(data, SliceChoice("axial", "middle")).images] == ["axial-010"]
    three = decode_scan(data, SliceChoice("axial", "middle:3")).images
    assert [im.name for im in three] == ["axial-009", "axial-010", "axial-011"]
    coronal = decode_scan(data, SliceChoice("coronal", "middle")).images
    assert [im.name for im in coronal] == ["coronal-024"] and coronal[0].pixels.shape == (20, 40)
    sagittal = decode_scan(data, SliceChoice("sagittal", "middle")).images
    assert [im.name for im in sagittal] == ["sagittal-020"] and sagittal[0].pixels.shape == (20, 48)


@pytest.mark.parametrize(
    ("axis", "slices", "message"),
    [
        ("axial", "some", "--slices 'some': expected all, middle, or middle:K"),
        ("axial", "middle:0", "--slices 'middle:0'"),
        ("oblique", "all", "--slice-axis 'oblique': expected one of axial, coronal, sagittal"),
    ],
)
def test_a_bad_slice_choice_is_refused(axis, slices, message):
    with pytest.raises(ValueError, match=message):
        SliceChoice(axis, slices)


def test_slices_of_a_volume_share_one_contrast():
    vol = np.zeros((32, 32, 8), np.int16)
    vol[4:28, 4:28, 2] = 200
    vol[4:28, 4:28, 5] = 400
    vol[10:20, 10:20, 2:6] += 50  # some texture, so that no slice is flat
    images = axial(nifti_bytes(vol))
    # one window for the volume: 0 (its 0.5th percentile, the background) to 450 (its 99.5th, the texture), so
    # 200 -> 200 / 450 * 255 = 113.3 and 400 -> 226.7; a window per slice would give both tissues 255 or so
    assert images["axial-002"][5, 5] == 113 and images["axial-005"][5, 5] == 227


def test_pixels_are_made_square_by_the_voxel_sizes():
    thick = np.diag([1.0, 1.0, 3.0, 1.0])  # 3 mm slices
    coronal = decode_scan(nifti_bytes(head_volume(), thick), SliceChoice("coronal", "middle")).images[0]
    assert coronal.pixels.shape == (60, 40)


def test_gzip_and_nifti_2_give_the_same_slices():
    vol = head_volume()
    plain = axial(nifti_bytes(vol))
    for data in (gzip.compress(nifti_bytes(vol)), nifti_bytes(vol, version=2)):
        other = axial(data)
        assert other.keys() == plain.keys() and all(np.array_equal(other[k], plain[k]) for k in plain)
    assert decode_scan(nifti_bytes(vol, version=2)).format == "NIfTI-2"


def test_a_trailing_axis_of_one_is_a_3d_volume():
    vol = head_volume()[..., None]
    assert len(decode_scan(nifti_bytes(vol), SliceChoice("axial", "middle")).images) == 1


def _corrupt_datatype() -> bytes:
    data = bytearray(nifti_bytes(head_volume()))
    data[70:72] = (9999).to_bytes(2, "little")  # datatype: no such code
    return bytes(data)


def _pair_header() -> bytes:
    data = bytearray(nifti_bytes(head_volume()))
    data[344:348] = b"ni1\x00"
    return bytes(data)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (lambda: nifti_bytes(np.ones((16, 16, 8, 3), np.float32)), "a 4-D NIfTI of 16x16x8x3 voxels"),
        (lambda: nifti_bytes(head_volume())[:5000], "truncated or corrupt NIfTI data (OSError: Expected"),
        (lambda: gzip.compress(nifti_bytes(head_volume()))[:3000], "truncated .nii.gz"),
        (_corrupt_datatype, "corrupt NIfTI header (HeaderDataError: data code 9999 not recognized)"),
        (_pair_header, "the header of a NIfTI .hdr/.img pair"),
        (lambda: nifti_bytes(np.zeros((16, 16, 8), np.int16)), "blank NIfTI: every voxel has one value"),
        (lambda: nifti_bytes((np.ones((8, 8, 40)) * np.arange(40)).astype(np.int16)), "image too small: 8x8"),
    ],
    ids=["4d", "truncated", "truncated-gz", "corrupt-header", "hdr-img-pair", "blank", "too-small"],
)
def test_a_bad_nifti_is_a_reason_never_an_exception(data, reason, capsys):
    scan, got = read_scan(data)
    assert scan is None and got.startswith(reason), got
    assert "\n" not in got and "expected" in got
    assert capsys.readouterr().err == ""  # nibabel's own log lines stay off the console


def test_a_chosen_slice_that_is_blank_is_named_in_the_reason():
    vol = head_volume()
    vol[:, :, 8:13] = 0
    scan, reason = read_scan(lambda: nifti_bytes(vol), choice=SliceChoice("axial", "middle"))
    assert scan is None and reason.startswith(
        "every chosen axial slice of the NIfTI volume is blank (1 of 20)"
    )
