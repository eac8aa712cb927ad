import io
import os
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from modules.decode import decode_image
from modules.ingest import load_image_set
from modules.scans import read_scan
from modules.sources import DatasetError
from tests.helpers import scan, write_image


def skipped_reasons(ds) -> dict[str, str]:
    return {s.path: s.reason for s in ds.skipped}


def test_loads_folder_and_caches_pixels(small_set):
    ds = load_image_set(small_set)
    assert ds.class_counts() == {"no": 8, "yes": 8}
    assert ds.skipped == []
    rec = ds.records[0]
    assert rec.pixels.dtype == np.uint8 and rec.pixels.ndim == 2
    assert len(ds.fingerprint) == 64


def test_fingerprint_depends_on_content_and_labels_not_names(small_set, tmp_path):
    a = load_image_set(small_set).fingerprint
    (small_set / "yes" / "y0.png").rename(small_set / "yes" / "renamed.png")
    assert load_image_set(small_set).fingerprint == a
    (small_set / "yes" / "renamed.png").rename(small_set / "no" / "moved.png")
    assert load_image_set(small_set).fingerprint != a


def test_one_wrapping_folder_is_accepted(tmp_path, small_set):
    wrapped = tmp_path / "outer"
    wrapped.mkdir()
    small_set.rename(wrapped / "brain_tumor_dataset")
    assert load_image_set(wrapped).class_counts() == {"no": 8, "yes": 8}


def test_two_wrapping_folders_are_refused(tmp_path, small_set):
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    small_set.rename(deep / "c")
    with pytest.raises(DatasetError, match="unexpected layout"):
        load_image_set(tmp_path / "a")


def test_format_from_content_not_extension(tmp_path, small_set):
    write_image(small_set / "no" / "actually_png.jpg", scan(7), fmt="PNG")
    ds = load_image_set(small_set)
    rec = next(r for r in ds.records if r.path.endswith("actually_png.jpg"))
    assert rec.format == "PNG"


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "CMYK", "I;16", "LA", "1", "I", "F"])
def test_every_mode_converted_to_gray(mode):
    pixels = scan(3)
    img = Image.fromarray(pixels)
    if mode == "I;16":
        img = Image.fromarray(pixels.astype(np.uint16) * 257)
        assert img.mode == "I;16"
    else:
        img = img.convert(mode)
    fmt = {"CMYK": "JPEG", "F": "TIFF", "I": "TIFF"}.get(mode, "PNG")
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    out, got_fmt, got_mode, w, h = decode_image(buf.getvalue())
    assert out.dtype == np.uint8 and out.shape == (48, 48)
    assert got_mode == mode and got_fmt == fmt
    if mode not in ("1",):  # bilevel loses the grey levels by definition
        assert np.corrcoef(out.ravel().astype(float), pixels.ravel().astype(float))[0, 1] > 0.95


def test_rgba_transparency_composited_on_black():
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., :3] = 255
    rgba[:16, :, 3] = 255  # top half opaque white, bottom half fully transparent white
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG")
    out = decode_image(buf.getvalue())[0]
    assert out[:16].min() == 255 and out[16:].max() == 0


def test_exif_rotation_applied():
    pixels = np.zeros((40, 80), np.uint8)
    pixels[:, :20] = 255
    img = Image.fromarray(pixels)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif)
    out = decode_image(buf.getvalue())[0]
    assert out.shape == (80, 40)


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("empty.jpg", b"", "empty file"),
        ("text.jpg", b"this is not an image at all\n" * 10, "not an image"),
    ],
)
def test_bad_files_are_skipped_with_reason(small_set, name, content, reason):
    (small_set / "yes" / name).write_bytes(content)
    warnings = []
    ds = load_image_set(small_set, warn=warnings.append)
    assert reason in skipped_reasons(ds)[f"yes/{name}"]
    assert any(name in w and reason in w for w in warnings)
    with pytest.raises(DatasetError, match=reason):
        load_image_set(small_set, strict=True)


def test_truncated_jpeg_is_skipped(small_set):
    buf = io.BytesIO()
    Image.fromarray(scan(1, 200)).save(buf, format="JPEG")
    (small_set / "yes" / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    assert "cannot decode" in skipped_reasons(load_image_set(small_set))["yes/cut.jpg"]


def test_read_scan_gives_the_reason_for_every_failure():
    """The one read-and-decode step of ingest and predict: a failure is a reason, never an exception."""

    def failing(exc: Exception):
        def read() -> bytes:
            raise exc

        return read

    buf = io.BytesIO()
    Image.fromarray(scan(3)).save(buf, format="PNG")
    image, reason = read_scan(lambda: buf.getvalue())
    assert reason == "" and image.format == "PNG" and len(image.images) == 1
    assert image.images[0].name == "" and image.images[0].pixels.shape == (image.height, image.width)
    assert read_scan(None, "symlink pointing outside the dataset root") == (
        None,
        "symlink pointing outside the dataset root",
    )
    assert read_scan(lambda: b"") == (None, "empty file (0 bytes)")
    denied = PermissionError(13, "Permission denied")
    assert read_scan(failing(denied)) == (None, "permission denied (unreadable file)")
    assert read_scan(failing(OSError(5, "Input/output error"))) == (None, "cannot read (Input/output error)")


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height grey pixels but carries almost no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def test_tiny_and_huge_dimensions_skipped_without_allocating(small_set):
    write_image(small_set / "yes" / "dot.png", np.zeros((1, 1), np.uint8))
    (small_set / "yes" / "huge.png").write_bytes(png_header_only(30000, 30000))
    reasons = skipped_reasons(load_image_set(small_set))
    assert "too small" in reasons["yes/dot.png"]
    assert "dimensions" in reasons["yes/huge.png"]


def test_animated_gif_skipped(small_set):
    frames = [Image.fromarray(scan(i)) for i in range(3)]
    frames[0].save(small_set / "yes" / "anim.gif", save_all=True, append_images=frames[1:])
    assert "frames" in skipped_reasons(load_image_set(small_set))["yes/anim.gif"]


def test_hidden_files_nested_folders_and_odd_names(small_set):
    (small_set / "yes" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (small_set / "yes" / "._y0.png").write_bytes(b"\0\5\26\7")
    write_image(small_set / "yes" / "sub dir" / "nested ünïcode.png", scan(77))
    bad_name = os.fsdecode(b"bad\xff\xfename.png")
    write_image(small_set / "no" / bad_name, scan(78))
    ds = load_image_set(small_set)
    paths = {r.path for r in ds.records}
    assert "yes/sub dir/nested ünïcode.png" in paths
    assert f"no/{bad_name}" in paths
    assert skipped_reasons(ds)["yes/.DS_Store"] == "hidden or system file"


def test_symlink_outside_root_is_not_followed(small_set, tmp_path):
    outside = write_image(tmp_path / "secret.png", scan(55))
    (small_set / "yes" / "link.png").symlink_to(outside)
    (small_set / "yes" / "inside.png").symlink_to(small_set / "yes" / "y1.png")
    ds = load_image_set(small_set)
    assert "outside the dataset root" in skipped_reasons(ds)["yes/link.png"]
    assert "yes/inside.png" in {r.path for r in ds.records}


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files regardless of permissions")
def test_unreadable_file_skipped(small_set):
    p = small_set / "yes" / "y2.png"
    p.chmod(0)
    try:
        assert "permission denied" in skipped_reasons(load_image_set(small_set))["yes/y2.png"]
    finally:
        p.chmod(0o644)


def _remove_no(r: Path) -> None:
    for p in (r / "no").iterdir():
        p.unlink()
    (r / "no").rmdir()


@pytest.mark.parametrize(
    ("setup", "classes", "message"),
    [
        (lambda r: [p.unlink() for p in (r / "yes").iterdir()], None, r"no usable images in yes/"),
        (_remove_no, None, r"found only one class folder \(yes/, 8 file\(s\)\); expected two or more"),
        (lambda r: (r / "maybe").mkdir(), None, r"no usable images in maybe/ \(found maybe/: 0, no/: 8"),
        (lambda r: (r / "YES").mkdir(), None, r"differ only in case: \[\['YES', 'yes'\]\]"),
        (lambda r: [p.unlink() for p in (r / "yes").iterdir()], ("no", "yes"), r"no usable images in yes/"),
        (_remove_no, ("no", "yes"), r"but no no/"),
        (lambda r: (r / "maybe").mkdir(), ("no", "yes"), r"unexpected folder\(s\) \['maybe/'\]"),
        (lambda r: (r / "YES").mkdir(), ("no", "yes"), r"differ only in case"),
    ],
    ids=[
        "empty-yes",
        "one-class",
        "empty-extra-class",
        "case-clash",
        "given-empty-yes",
        "given-missing-no",
        "given-extra-class",
        "given-case-clash",
    ],
)
def test_layout_errors_say_what_was_found(small_set, setup, classes, message):
    setup(small_set)
    with pytest.raises(DatasetError, match=message):
        load_image_set(small_set, classes=classes)


def test_capitalised_class_folders_accepted(small_set):
    (small_set / "yes").rename(small_set / "Yes")
    (small_set / "no").rename(small_set / "NO")
    ds = load_image_set(small_set)
    assert ds.class_counts() == {"no": 8, "yes": 8}


def test_no_images_and_missing_path(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="unexpected layout"):
        load_image_set(tmp_path / "empty")
    with pytest.raises(DatasetError, match="no such file"):
        load_image_set(tmp_path / "nope")
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(DatasetError, match="neither a folder nor a zip"):
        load_image_set(tmp_path / "f.txt")


def _zip_of(folder: Path, zpath: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(zpath, "w") as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, prefix + p.relative_to(folder).as_posix())
    return zpath


def test_zip_read_in_memory_with_wrapping_folder(small_set, tmp_path):
    z = _zip_of(small_set, tmp_path / "kaggle.zip", prefix="brain_tumor_dataset/")
    before = set(tmp_path.rglob("*"))
    ds = load_image_set(z)
    assert ds.class_counts() == {"no": 8, "yes": 8}
    assert ds.fingerprint == load_image_set(small_set).fingerprint
    assert set(tmp_path.rglob("*")) == before  # nothing extracted


def test_zip_slip_and_absolute_entries_refused(small_set, tmp_path):
    z = _zip_of(small_set, tmp_path / "evil.zip")
    png = (small_set / "yes" / "y0.png").read_bytes()
    with zipfile.ZipFile(z, "a") as zf:
        zf.writestr("../escape.png", png)
        zf.writestr("/abs/escape.png", png)
        zf.writestr("yes/../../escape2.png", png)
    ds = load_image_set(z)
    unsafe = [s for s in ds.skipped if "unsafe path" in s.reason]
    assert len(unsafe) == 3
    assert not (tmp_path.parent / "escape.png").exists() and not Path("/abs/escape.png").exists()
    assert ds.class_counts() == {"no": 8, "yes": 8}


def test_zip_bomb_entry_refused(small_set, tmp_path):
    z = _zip_of(small_set, tmp_path / "bomb.zip")
    with zipfile.ZipFile(z, "a", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("yes/bomb.png", b"\0" * (20 * 1024**2))
    ds = load_image_set(z)
    assert "zip bomb" in skipped_reasons(ds)["yes/bomb.png"]


def test_not_a_zip(tmp_path):
    p = tmp_path / "x.zip"
    p.write_bytes(b"PK\3\4 broken")
    with pytest.raises(DatasetError):
        load_image_set(p)


# ----------------------------------------------------------------------------- classes from the data
def _three_class_set(root: Path) -> Path:
    for name, first in (("Meningioma", 300), ("glioma", 400), ("no_tumour", 500)):
        for i in range(3):
            write_image(root / name / f"{name[:2]}{i}.png", scan(first + i, mass=name != "no_tumour"))
    return root


def test_classes_come_from_the_folders_sorted_and_lower_case(tmp_path):
    root = _three_class_set(tmp_path / "set")
    (root / ".cache").mkdir()
    write_image(root / ".cache" / "stale.png", scan(1))
    write_image(root / "__MACOSX" / "x.png", scan(2))
    ds = load_image_set(root)
    assert ds.classes == ("glioma", "meningioma", "no_tumour")
    assert ds.class_counts() == {"glioma": 3, "meningioma": 3, "no_tumour": 3}
    assert sorted(set(ds.targets.tolist())) == [0, 1, 2]
    assert {r.path.split("/")[0] for r in ds.records} == {"glioma", "Meningioma", "no_tumour"}


def test_classes_from_the_folders_inside_a_wrapping_folder_and_a_zip(tmp_path):
    root = _three_class_set(tmp_path / "outer" / "Brain Tumor MRI")
    z = _zip_of(tmp_path / "outer", tmp_path / "set.zip")
    assert load_image_set(tmp_path / "outer").classes == ("glioma", "meningioma", "no_tumour")
    assert load_image_set(z).fingerprint == load_image_set(root).fingerprint


def test_the_yes_no_set_reads_as_before(small_set):
    """Discovered classes of the brain-MRI layout are exactly the old fixed ("no", "yes")."""
    found, given = load_image_set(small_set), load_image_set(small_set, classes=("no", "yes"))
    assert found.classes == given.classes == ("no", "yes")
    assert found.targets.tolist() == given.targets.tolist()
    assert [r.path for r in found.records] == [r.path for r in given.records]
    assert found.fingerprint == given.fingerprint


def test_a_second_copy_of_the_class_folders_is_refused(small_set, tmp_path):
    z = _zip_of(small_set, tmp_path / "kaggle.zip")
    with zipfile.ZipFile(z, "a") as zf:  # the Kaggle archive: yes/, no/ and brain_tumor_dataset/{yes,no}/
        for p in sorted(q for q in small_set.rglob("*") if q.is_file()):
            zf.write(p, "brain_tumor_dataset/" + p.relative_to(small_set).as_posix())
    with pytest.raises(
        DatasetError, match=r"\['brain_tumor_dataset/'\] at the top level hold their own copies"
    ):
        load_image_set(z)


def test_one_class_folder_is_refused(tmp_path):
    for i in range(3):
        write_image(tmp_path / "set" / "wrap" / "glioma" / f"g{i}.png", scan(i))
    write_image(tmp_path / "set" / "wrap" / ".hidden" / "h.png", scan(9))
    with pytest.raises(
        DatasetError, match=r"only one class folder \(glioma/\) at wrap/; expected two or more class"
    ):
        load_image_set(tmp_path / "set")
