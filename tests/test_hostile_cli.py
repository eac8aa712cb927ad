"""Hostile inputs at the command line: ``tuning.data`` (and ``tuning.train``) run through ``run_main`` on files
that a careless or malicious source may hand over. Each test writes its own files.

Every case ends in one of two ways, never in a traceback:

* a named skip: exit 0 and ``warning: skipped <name>: <reason>`` on stderr, or
* a clear error: exit 2 and exactly one ``error: ...`` line on stderr (after any skip warnings);

and nothing is written outside the target folder (the whole test folder is listed before and after).
"""

from __future__ import annotations

import csv
import io
import json
import os
import stat
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import modules.sources as sources
from tests.helpers import REPO, scan, write_image
from tests.test_ingest import png_header_only
from tuning import data as data_cli
from tuning import train as train_cli
from tuning.cli import run_main


# ----------------------------------------------------------------------------- helpers
def listing(root: Path) -> dict[bytes, tuple[int, int]]:
    """Every path under ``root`` (links not followed) -> (size or -1, mtime in ns): a snapshot to compare."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(os.fsencode(root)):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            size = st.st_size if stat.S_ISREG(st.st_mode) else -1
            out[os.path.relpath(full, os.fsencode(root))] = (size, st.st_mtime_ns)
    return out


def changed(before: dict, after: dict) -> set[bytes]:
    return {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}


@pytest.fixture
def ws(tmp_path, small_set, monkeypatch):
    """The workspace: ``small_set`` (tmp/set), an empty current folder (tmp/cwd), and a file outside the set."""
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")  # anything written to the current folder shows up in the listing
    write_image(tmp_path / "secret.png", scan(999))
    return tmp_path


def run_cli(main, argv, capsys, ws: Path, *, allowed: str | None = None) -> tuple[int, str, list[str]]:
    """Run ``main`` through ``run_main``; check no traceback and no write outside ``ws/allowed``."""
    before = listing(ws)
    code = run_main(main, [os.fsdecode(a) if isinstance(a, bytes) else str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err, out + err
    outside = {
        p for p in changed(before, listing(ws)) if allowed is None or not p.startswith(allowed.encode())
    }
    assert not outside, f"written outside the target folder: {sorted(outside)}"
    return code, out, err.splitlines()


def assert_skipped(code: int, err: list[str], name: str, reason: str) -> None:
    assert code == 0, err
    lines = [line for line in err if line.startswith(f"warning: skipped {name}: ")]
    assert len(lines) == 1, err
    assert reason in lines[0], lines[0]


def assert_error(code: int, err: list[str], message: str) -> None:
    assert code == 2, err
    errors = [line for line in err if line.startswith("error: ")]
    assert len(errors) == 1, err
    assert all(line.startswith(("error: ", "warning: ")) for line in err), err
    assert message in errors[0], errors[0]


def jpeg(pixels: np.ndarray, **save) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", **save)
    return buf.getvalue()


def jpeg_declaring(width: int, height: int) -> bytes:
    """A small JPEG whose frame header (SOF0) is patched to declare width x height pixels."""
    data = bytearray(jpeg(scan(5, 32)))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


# ----------------------------------------------------------------------------- bad files: a named skip
def _zero_bytes(root):
    (root / "yes" / "empty.jpg").write_bytes(b"")
    return "yes/empty.jpg", "empty file (0 bytes)"


def _truncated_jpeg(root):
    data = jpeg(scan(1, 200))
    (root / "yes" / "cut.jpg").write_bytes(data[: len(data) // 2])
    return "yes/cut.jpg", "cannot decode JPEG data"


def _text_as_jpg(root):
    (root / "yes" / "notes.jpg").write_text("patient notes, not a scan\n" * 20)
    return "yes/notes.jpg", "not an image"


def _one_pixel(root):
    write_image(root / "yes" / "dot.png", np.zeros((1, 1), np.uint8))
    return "yes/dot.png", "image too small: 1x1"


def _huge_png(root):
    (root / "yes" / "huge.png").write_bytes(png_header_only(30000, 30000))
    return "yes/huge.png", "image dimensions too large (decompression bomb)"


def _huge_jpeg(root):
    (root / "yes" / "huge.jpg").write_bytes(jpeg_declaring(30000, 30000))
    return "yes/huge.jpg", "image dimensions too large (decompression bomb)"


def _absurd_png(root):  # under Pillow's own bomb limit, over ours: refused from the header
    (root / "yes" / "big.png").write_bytes(png_header_only(7000, 7000))
    return "yes/big.png", "absurd dimensions 7000x7000"


def _animated_gif(root):
    frames = [Image.fromarray(scan(i)) for i in range(3)]
    frames[0].save(root / "yes" / "anim.gif", save_all=True, append_images=frames[1:])
    return "yes/anim.gif", "3 frames (animated or multi-page)"


def _ds_store(root):
    (root / "yes" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1" + b"\0" * 100)
    return "yes/.DS_Store", "hidden or system file"


def _apple_double(root):
    (root / "yes" / "._y0.png").write_bytes(b"\0\5\26\7\0\2\0\0Mac OS X")
    return "yes/._y0.png", "hidden or system file"


def _invalid_utf8_bad_file(root):
    (Path(os.fsdecode(os.fsencode(root / "yes") + b"/bad\xff name.jpg"))).write_bytes(b"")
    return "yes/bad\\xff name.jpg", "empty file (0 bytes)"


def _symlink_outside(root):
    (root / "yes" / "link.png").symlink_to(root.parent / "secret.png")
    return "yes/link.png", "symlink pointing outside the dataset root"


def _symlink_up_relative(root):
    (root / "yes" / "up.png").symlink_to(Path("..") / ".." / "secret.png")
    return "yes/up.png", "symlink pointing outside the dataset root"


def _symlinked_folder(root):
    (root.parent / "elsewhere").mkdir()
    write_image(root.parent / "elsewhere" / "e.png", scan(998))
    (root / "yes" / "more").symlink_to(root.parent / "elsewhere", target_is_directory=True)
    return "yes/more", "symlinked folder (not followed)"


def _dangling_symlink(root):
    (root / "yes" / "gone.png").symlink_to(root / "yes" / "nothing-here.png")
    return "yes/gone.png", "symlink to something that is not a file"


def _fifo_named_like_image(root):
    os.mkfifo(root / "yes" / "pipe.jpg")  # opening it would block: it is never opened
    return "yes/pipe.jpg", "not a regular file"


SKIPS = [
    _zero_bytes,
    _truncated_jpeg,
    _text_as_jpg,
    _one_pixel,
    _huge_png,
    _huge_jpeg,
    _absurd_png,
    _animated_gif,
    _ds_store,
    _apple_double,
    _invalid_utf8_bad_file,
    _symlink_outside,
    _symlink_up_relative,
    _symlinked_folder,
    _dangling_symlink,
    _fifo_named_like_image,
]


@pytest.mark.parametrize("make", SKIPS, ids=[f.__name__.strip("_") for f in SKIPS])
def test_bad_file_is_a_named_skip(ws, capsys, make):
    name, reason = make(ws / "set")
    code, out, err = run_cli(data_cli.main, [ws / "set", "--json"], capsys, ws)
    assert_skipped(code, err, name, reason)
    summary = json.loads(out)
    assert {"path": name, "reason": summary["skipped"][0]["reason"]} in summary["skipped"]
    assert summary["files"] == 16 and summary["classes"] == {"no": 8, "yes": 8}


@pytest.mark.parametrize("make", [_zero_bytes, _symlink_outside], ids=["zero-bytes", "symlink-outside"])
def test_strict_refuses_the_bad_file_with_one_error(ws, capsys, make):
    name, reason = make(ws / "set")
    code, _, err = run_cli(data_cli.main, [ws / "set", "--strict"], capsys, ws)
    assert_error(code, err, f"{name}: {reason}")
    assert "--strict refuses bad files" in err[-1]


def test_unreadable_file_is_a_named_skip_even_as_root(ws, capsys, monkeypatch):
    # root reads chmod-0 files, so the refusal comes from a patched open() that fails like the kernel would
    real_open = open

    def refusing_open(path, *args, **kwargs):
        if os.fspath(path).endswith("y3.png"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(sources, "open", refusing_open, raising=False)
    code, _, err = run_cli(data_cli.main, [ws / "set"], capsys, ws)
    assert_skipped(code, err, "yes/y3.png", "permission denied (unreadable file)")


def _refuse_listing(monkeypatch, folder: Path) -> None:
    """``os.scandir`` of ``folder`` fails like an unreadable (chmod 0) folder does for a normal user."""
    real_scandir, blocked = os.scandir, os.fspath(folder)

    def scandir(path="."):
        if os.fspath(path) == blocked:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)


def test_unreadable_sub_folder_is_a_named_skip(ws, capsys, monkeypatch):
    write_image(ws / "set" / "yes" / "locked" / "hidden_from_us.png", scan(400, mass=True))
    _refuse_listing(monkeypatch, ws / "set" / "yes" / "locked")
    code, _, err = run_cli(data_cli.main, [ws / "set"], capsys, ws)
    assert_skipped(code, err, "yes/locked", "unreadable folder (Permission denied)")


def test_unreadable_class_folder_is_named_then_one_error(ws, capsys, monkeypatch):
    _refuse_listing(monkeypatch, ws / "set" / "yes")
    code, _, err = run_cli(data_cli.main, [ws / "set"], capsys, ws)
    assert err[0] == "warning: skipped yes: unreadable folder (Permission denied)"
    assert_error(code, err, "no usable images in yes/ (found no/: 8, yes/: 0, 1 skipped)")


def test_unreadable_data_folder_is_one_error(ws, capsys, monkeypatch):
    _refuse_listing(monkeypatch, ws / "set")
    code, _, err = run_cli(data_cli.main, [ws / "set"], capsys, ws)
    assert_error(code, err, "cannot read the folder (Permission denied)")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files regardless of permissions")
def test_chmod_0_file_is_a_named_skip(ws, capsys):
    p = ws / "set" / "yes" / "y3.png"
    p.chmod(0)
    try:
        code, _, err = run_cli(data_cli.main, [ws / "set"], capsys, ws)
    finally:
        p.chmod(0o644)
    assert_skipped(code, err, "yes/y3.png", "permission denied (unreadable file)")


# ----------------------------------------------------------------------------- odd but valid: accepted
def _png_named_jpg(root):
    write_image(root / "yes" / "actually_png.jpg", scan(301, mass=True), fmt="PNG")
    return "yes/actually_png.jpg", {"formats": "PNG"}


def _cmyk_jpeg(root):
    write_image(root / "yes" / "cmyk.jpg", scan(302, mass=True), fmt="JPEG", mode="CMYK")
    return "yes/cmyk.jpg", {"modes": "CMYK"}


def _png_16_bit(root):
    Image.fromarray(scan(303, mass=True).astype(np.uint16) * 257).save(root / "yes" / "deep.png")
    return "yes/deep.png", {"modes": "I;16"}


def _exif_rotated(root):
    img = Image.fromarray(scan(304, 64, mass=True)[:, 8:56])
    exif = img.getexif()
    exif[0x0112] = 6  # displayed rotated by 90 degrees
    img.save(root / "yes" / "rotated.jpg", format="JPEG", exif=exif)
    return "yes/rotated.jpg", {"formats": "JPEG"}


def _space_and_unicode(root):
    write_image(root / "yes" / "scan with spaces ünïcødé 脑.png", scan(305, mass=True))
    return "yes/scan with spaces ünïcødé 脑.png", {}


def _invalid_utf8_name(root):
    write_image(Path(os.fsdecode(os.fsencode(root / "yes") + b"/bad\xfe\xffname.png")), scan(306, mass=True))
    return "yes/bad\\xfe\\xffname.png", {}


def _nested_folders(root):
    write_image(root / "yes" / "sub dir" / "deeper" / "n.png", scan(307, mass=True))
    return "yes/sub dir/deeper/n.png", {}


def _capitalised_classes(root):
    (root / "yes").rename(root / "Yes")
    (root / "no").rename(root / "NO")
    write_image(root / "Yes" / "cap.png", scan(308, mass=True))
    return "Yes/cap.png", {}


ACCEPTS = [
    _png_named_jpg,
    _cmyk_jpeg,
    _png_16_bit,
    _exif_rotated,
    _space_and_unicode,
    _invalid_utf8_name,
    _nested_folders,
    _capitalised_classes,
]


@pytest.mark.parametrize("make", ACCEPTS, ids=[f.__name__.strip("_") for f in ACCEPTS])
def test_odd_but_valid_input_is_accepted(ws, capsys, make):
    name, expect = make(ws / "set")
    split = ws / "out" / "split.csv"
    code, out, err = run_cli(
        data_cli.main, [ws / "set", "--json", "--write-split", split], capsys, ws, allowed="out"
    )
    assert code == 0, err
    assert not [line for line in err if "skipped" in line], err
    summary = json.loads(out)
    assert summary["files"] == 17 and summary["classes"] == {"no": 8, "yes": 9}
    for key, value in expect.items():
        assert value in summary[key], summary[key]
    assert name in {row["path"] for row in csv.DictReader(split.open(encoding="utf-8"))}


def test_data_folder_with_an_undecodable_name_prints_cleanly(ws, capsys):
    odd = Path(os.fsdecode(os.fsencode(ws) + b"/set\xff copy"))
    (ws / "set").rename(odd)
    code, out, err = run_cli(data_cli.main, [odd], capsys, ws)
    assert code == 0, err
    assert "data: " in out and "set\\xff copy" in out


# ----------------------------------------------------------------------------- layout: one clear error
def _remove_all(folder: Path) -> None:
    for p in folder.iterdir():
        p.unlink()


LAYOUT_ERRORS = {
    "empty-yes": (lambda r: _remove_all(r / "yes"), "no usable images in yes/"),
    "only-bad-files-in-yes": (
        lambda r: [_remove_all(r / "yes"), (r / "yes" / "a.jpg").write_bytes(b"")],
        "no usable images in yes/ (found no/: 8, yes/: 0, 1 skipped)",
    ),
    "missing-no": (
        lambda r: [_remove_all(r / "no"), (r / "no").rmdir()],
        "found only one class folder (yes/, 8 file(s)); expected two or more class folders",
    ),
    "empty-extra-class": (lambda r: (r / "maybe").mkdir(), "no usable images in maybe/"),
    "second-copy": (
        lambda r: write_image(r / "brain_tumor_dataset" / "yes" / "y.png", scan(5)),
        "folder(s) ['brain_tumor_dataset/'] at the top level hold their own copies of the class folders",
    ),
    "case-clash": (lambda r: (r / "YES").mkdir(), "folders whose names differ only in case"),
    "two-classes-without-yes": (
        lambda r: [(r / "yes").rename(r / "a"), (r / "no").rename(r / "b")],
        "two classes (a, b) and no 'yes' among them; expected --positive-class",
    ),
    "yes-is-a-file": (
        lambda r: [_remove_all(r / "yes"), (r / "yes").rmdir(), (r / "yes").write_bytes(b"x")],
        "unexpected layout: found only one class folder (no/) at the top level",
    ),
    "too-few-images": (
        lambda r: [p.unlink() for p in [*(r / "yes").iterdir()][1:] + [*(r / "no").iterdir()][1:]],
        "too few distinct images",
    ),
}


@pytest.mark.parametrize("case", sorted(LAYOUT_ERRORS))
def test_bad_layout_is_one_clear_error(ws, capsys, case):
    setup, message = LAYOUT_ERRORS[case]
    setup(ws / "set")
    code, out, err = run_cli(data_cli.main, [ws / "set"], capsys, ws)
    assert_error(code, err, message)
    assert out == ""


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda ws: ws / "nope", "no such file or folder"),
        (lambda ws: (ws / "notes.txt").write_text("x") and ws / "notes.txt", "neither a folder nor a zip"),
        (lambda ws: (ws / "fake.zip").write_bytes(b"PK\3\4 broken") and ws / "fake.zip", "neither a folder"),
        (lambda ws: (ws / "empty").mkdir() or ws / "empty", "unexpected layout"),
    ],
    ids=["missing", "text-file", "broken-zip", "empty-folder"],
)
def test_bad_data_path_is_one_clear_error(ws, capsys, make, message):
    code, _, err = run_cli(data_cli.main, [make(ws)], capsys, ws)
    assert_error(code, err, message)


def test_fifo_as_data_path_is_refused_without_blocking(ws, capsys):
    fifo = ws / "data.zip"
    os.mkfifo(fifo)

    def unblock():  # if the code under test opened the FIFO, a writer lets it go on (and the test fail)
        time.sleep(20)
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK) if fifo.exists() else None
        if fd is not None:
            os.close(fd)

    threading.Thread(target=unblock, daemon=True).start()
    started = time.monotonic()
    code, _, err = run_cli(data_cli.main, [fifo], capsys, ws)
    assert time.monotonic() - started < 10
    assert_error(code, err, "neither a folder nor a zip archive")


# ----------------------------------------------------------------------------- archives
def zip_of(folder: Path, target: Path, extra: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, "brain_tumor_dataset/" + p.relative_to(folder).as_posix())
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return target


def _corrupt_entry(zpath: Path, name: str) -> None:
    """Flip bytes inside ``name``'s compressed data (its CRC no longer matches)."""
    with zipfile.ZipFile(zpath) as zf:
        info = zf.getinfo(name)
    data = bytearray(zpath.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    for i in range(start + 8, start + 24):
        data[i] ^= 0x5A
    zpath.write_bytes(bytes(data))


def _mark_encrypted(zpath: Path, name: str) -> None:
    """Set the 'encrypted' flag of ``name`` in its local header and in the central directory."""
    data = bytearray(zpath.read_bytes())
    encoded = name.encode()
    for sig, flag_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        pos = data.index(sig + b"", 0)
        while pos != -1:
            name_at = pos + (30 if sig == b"PK\x03\x04" else 46)
            if data[name_at : name_at + len(encoded)] == encoded:
                data[pos + flag_at] |= 0x01
            pos = data.find(sig, pos + 4)
    zpath.write_bytes(bytes(data))


def test_zip_slip_and_absolute_entries_are_skipped_and_nothing_is_extracted(ws, capsys):
    png = (ws / "set" / "yes" / "y0.png").read_bytes()
    evil = {
        "../escape.png": png,
        "brain_tumor_dataset/yes/../../../escape2.png": png,
        "/tmp/abs-escape-test.png": png,
        "C:/windows/escape3.png": png,
    }
    z = zip_of(ws / "set", ws / "evil.zip", evil)
    code, out, err = run_cli(data_cli.main, [z, "--json"], capsys, ws)
    assert code == 0, err
    unsafe = [line for line in err if "unsafe path in archive" in line]
    assert len(unsafe) == 4, err
    assert json.loads(out)["files"] == 16
    assert not Path("/tmp/abs-escape-test.png").exists()
    assert not (ws.parent / "escape.png").exists() and not (ws.parent / "escape2.png").exists()
    assert os.listdir(ws / "cwd") == []


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("bomb", "compression ratio"),
        ("corrupt", "corrupt or unreadable archive entry (BadZipFile"),
        ("encrypted", "corrupt or unreadable archive entry (RuntimeError"),
        ("symlink", "symlink inside archive (not followed)"),
        ("empty", "empty file (0 bytes)"),
    ],
    ids=["bomb", "corrupt", "encrypted", "symlink", "empty"],
)
def test_bad_archive_entry_is_a_named_skip(ws, capsys, case, reason):
    name = f"brain_tumor_dataset/yes/{case}.png"
    payload = {"bomb": b"\0" * (20 * 1024**2), "empty": b""}.get(
        case, (ws / "set" / "yes" / "y0.png").read_bytes()
    )
    z = zip_of(ws / "set", ws / "data.zip", {name: payload} if case != "symlink" else None)
    if case == "symlink":
        info = zipfile.ZipInfo(name)
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        with zipfile.ZipFile(z, "a") as zf:
            zf.writestr(info, "../../../secret.png")
    if case == "corrupt":
        _corrupt_entry(z, name)
    if case == "encrypted":
        _mark_encrypted(z, name)
    code, _, err = run_cli(data_cli.main, [z], capsys, ws)
    assert_skipped(code, err, f"yes/{case}.png", reason)


def test_macos_archive_litter_is_ignored(ws, capsys):
    litter = {
        "__MACOSX/brain_tumor_dataset/yes/._y0.png": b"\0\5\26\7",
        "brain_tumor_dataset/README.txt": b"hi",
    }
    z = zip_of(ws / "set", ws / "mac.zip", litter)
    code, out, err = run_cli(data_cli.main, [z, "--json"], capsys, ws)
    assert code == 0 and err == [], err
    assert json.loads(out)["files"] == 16


def test_archive_missing_a_class_is_one_clear_error(ws, capsys):
    _remove_all(ws / "set" / "no")
    (ws / "set" / "no").rmdir()
    z = zip_of(ws / "set", ws / "half.zip")
    code, _, err = run_cli(data_cli.main, [z], capsys, ws)
    assert_error(
        code, err, "found only one class folder (yes/) at brain_tumor_dataset/; expected two or more"
    )


# ----------------------------------------------------------------------------- no pixel buffer for a bomb
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the peak memory from /proc")
def test_declared_30000_px_images_are_refused_without_allocating(tmp_path):
    """A fresh process reads a set holding a PNG and a JPEG that declare 30000x30000 pixels (900 MB as 8-bit
    grey); its peak memory stays far below what decoding either would take."""
    root = tmp_path / "set"
    for i in range(8):
        write_image(root / "yes" / f"y{i}.png", scan(100 + i, mass=True))
        write_image(root / "no" / f"n{i}.png", scan(200 + i))
    (root / "yes" / "huge.png").write_bytes(png_header_only(30000, 30000))
    (root / "yes" / "huge.jpg").write_bytes(jpeg_declaring(30000, 30000))
    script = (
        "import re, sys\n"
        "from tuning.cli import run_main\n"
        "from tuning.data import main\n"
        f"code = run_main(main, [{str(root)!r}])\n"
        # VmHWM: this process's peak resident memory (ru_maxrss would include the forking pytest's)
        "print('peak_kb', re.search(r'VmHWM:\\s*(\\d+)', open('/proc/self/status').read()).group(1))\n"
        "sys.exit(code)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("image dimensions too large") == 2, proc.stderr
    peak_mb = int(proc.stdout.split("peak_kb")[1]) / 1024
    assert peak_mb < 400, f"peak memory {peak_mb:.0f} MB: a 900 MB pixel buffer was allocated?"


# ----------------------------------------------------------------------------- tuning.train on hostile data
TINY_TRAIN = [
    "--model",
    "cnn",
    "--max-epochs",
    "1",
    "--image-size",
    "32",
    "--resize",
    "36",
    "--cnn-depth",
    "2",
    "--cnn-width",
    "8",
    "--batch-size",
    "8",
    "--threads",
    "1",
    "--no-progress",
]


def test_train_skips_every_bad_file_by_name_and_writes_only_its_run_folder(ws, capsys):
    root = ws / "set"
    expected = [make(root) for make in (_zero_bytes, _text_as_jpg, _symlink_outside, _ds_store, _huge_png)]
    argv = ["--data", root, "--out", ws / "run", *TINY_TRAIN]
    code, out, err = run_cli(train_cli.main, argv, capsys, ws, allowed="run")
    assert code == 0, err
    for name, reason in expected:
        assert_skipped(code, err, name, reason)
    report = json.loads((ws / "run" / "report.json").read_text())
    assert report["data"]["skipped"] == len(expected) and report["data"]["files"] == 16
    assert "test accuracy" in out


def test_train_on_a_broken_archive_is_one_error_and_writes_nothing(ws, capsys):
    _remove_all(ws / "set" / "no")
    (ws / "set" / "no").rmdir()
    z = zip_of(ws / "set", ws / "half.zip")
    code, out, err = run_cli(train_cli.main, ["--data", z, "--out", ws / "run", *TINY_TRAIN], capsys, ws)
    assert_error(
        code, err, "found only one class folder (yes/) at brain_tumor_dataset/; expected two or more"
    )
    assert not (ws / "run").exists()
