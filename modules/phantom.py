"""Write a deterministic synthetic brain-MRI "phantom" set, so the pipeline runs offline with no real data.

``make_phantom`` writes ``root/<class>/<class>_<i>.png``: the slices of ``modules.phantom_render`` (the first
class without a mass, every further class with one mass of its own kind), byte-identical on every machine; or,
with ``format="dicom"``, the same slices as one DICOM series per synthetic patient (``modules.phantom_dicom``).
The PNG files are written here with stored (uncompressed) deflate blocks rather than by Pillow, because
compressed bytes depend on the zlib build (zlib, zlib-ng, vendor forks), and the data fingerprint of a run must
not. ``python -m modules.phantom OUT`` does the same from the command line.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import struct
import sys
import zlib

import numpy as np

from modules.phantom_dicom import expected_files, make_phantom_dicom
from modules.phantom_render import MASS_KINDS, mass_kind, render_example

CLASSES = ("no", "yes")
FORMATS = ("png", "dicom")
MIN_SIZE, MAX_SIZE = 32, 2048
# Bumped on every change to the images written (tests/test_phantom.py pins their bytes), so that a cached set
# made by an older generator is never taken for a current one.
VERSION = 2


# ----------------------------------------------------------------------------------------------- PNG
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png(img: np.ndarray) -> bytes:
    """8-bit grayscale PNG of a uint8 (H, W) array, with stored deflate blocks: the same bytes everywhere."""
    assert img.dtype == np.uint8 and img.ndim == 2, (img.dtype, img.shape)
    h, w = img.shape
    raw = np.concatenate([np.zeros((h, 1), np.uint8), img], axis=1).tobytes()  # filter byte 0 per row
    blocks, step = [], 65535
    for start in range(0, len(raw), step):
        part = raw[start : start + step]
        final = 1 if start + step >= len(raw) else 0
        blocks.append(struct.pack("<BHH", final, len(part), len(part) ^ 0xFFFF) + part)
    stream = b"\x78\x01" + b"".join(blocks) + struct.pack(">I", zlib.adler32(raw))
    header = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", stream)
        + _png_chunk(b"IEND", b"")
    )


# ----------------------------------------------------------------------------------------------- sets
def _positive_int(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_args(
    root: pathlib.Path, n_per_class: int, size: int, seed: int, classes: tuple[str, ...], layout: tuple
) -> None:
    _positive_int("n_per_class", n_per_class)
    if not isinstance(size, int) or isinstance(size, bool) or not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"size must be an integer from {MIN_SIZE} to {MAX_SIZE} px, got {size!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not 2 <= len(classes) <= 1 + len(MASS_KINDS):
        raise ValueError(
            f"classes must name 2 to {1 + len(MASS_KINDS)} classes (the first has no mass), "
            f"got {len(classes)}: {classes!r}"
        )
    for name in classes:
        if not name or name in (".", "..") or any(ch in name for ch in "/\\\0") or name != name.strip():
            raise ValueError(f"class name {name!r} is not a plain folder name")
    if len(set(classes)) != len(classes):
        raise ValueError(f"class names must be distinct, got {classes!r}")
    _check_root(root, classes, n_per_class, layout)


def _expected(name: str, n_per_class: int, layout: tuple[str, int]) -> set[str]:
    """The paths under ``<class>/`` that a set of this ``layout`` (format, slices per patient) holds."""
    format, slices_per_patient = layout
    if format == "dicom":
        return expected_files(name, n_per_class, slices_per_patient)
    return {f"{name}_{i}.png" for i in range(n_per_class)}


def _check_root(root: pathlib.Path, classes: tuple[str, ...], n_per_class: int, layout: tuple) -> None:
    """Refuse a root holding anything but this set's own files, so a set never mixes in stale images."""
    if root.exists() and not root.is_dir():
        raise ValueError(f"{root} exists and is not a folder")
    if not root.exists():
        return
    extra = [p.name for p in root.iterdir() if p.name not in classes or not p.is_dir()]
    for name in classes:
        folder = root / name
        if folder.is_dir():
            mine = _expected(name, n_per_class, layout)
            extra += [
                f"{name}/{rel}"
                for p in folder.rglob("*")
                if (rel := p.relative_to(folder).as_posix()) not in mine and not p.is_dir()
            ]
    if extra:
        shown = ", ".join(sorted(extra)[:5]) + (", ..." if len(extra) > 5 else "")
        raise ValueError(
            f"{root} already holds files that are not part of this phantom set ({shown}); "
            f"expected an empty or missing folder, or one written by the same call"
        )


def make_phantom(
    root: str | os.PathLike,
    *,
    n_per_class: int = 40,
    size: int = 128,
    seed: int = 0,
    classes: tuple[str, ...] = CLASSES,
    format: str = "png",
    slices_per_patient: int = 4,
) -> pathlib.Path:
    """Write a deterministic synthetic brain-MRI-like set: root/<class>/<class>_<i>.png, grayscale PNG; or, with
    ``format="dicom"``, root/<class>/<patient>/IM0001... (``modules.phantom_dicom``), ``slices_per_patient``
    images per patient.

    The first class has no mass, each further class one mass of kind `MASS_KINDS[k - 1]`; images are
    `size` x `size` px, 8-bit. Same arguments -> byte-identical files on every machine, and image i of a class
    is the same whatever `n_per_class` is. Returns root as a Path. Raises ValueError on bad arguments or when
    root holds files this call would not write.
    """
    root = pathlib.Path(root)
    classes = tuple(classes)
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    _positive_int("slices_per_patient", slices_per_patient)
    _check_args(root, n_per_class, size, seed, classes, (format, slices_per_patient))
    if format == "dicom":
        return make_phantom_dicom(
            root,
            n_per_class=n_per_class,
            slices_per_patient=slices_per_patient,
            size=size,
            seed=seed,
            classes=classes,
        )
    for ci, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            img, _ = render_example(ci, i, size=size, seed=seed)
            (folder / f"{name}_{i}.png").write_bytes(encode_png(img))
    return root


# ----------------------------------------------------------------------------------------------- CLI
def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m modules.phantom",
        description="Write a deterministic synthetic brain-MRI phantom set: OUT/<class>/<class>_<i>.png.",
    )
    p.add_argument(
        "out", metavar="OUT", help="folder to write; must be empty, missing, or hold this same set"
    )
    p.add_argument("--n-per-class", type=int, default=40, metavar="N", help="images per class (default: 40)")
    p.add_argument(
        "--size",
        type=int,
        default=128,
        metavar="PX",
        help=f"image width and height in pixels, {MIN_SIZE} to {MAX_SIZE} (default: 128)",
    )
    p.add_argument("--seed", type=int, default=0, metavar="S", help="non-negative random seed (default: 0)")
    p.add_argument(
        "--classes",
        nargs="+",
        default=list(CLASSES),
        metavar="NAME",
        help=f"class folder names, the first without a mass, 2 to {1 + len(MASS_KINDS)} "
        f"(default: {' '.join(CLASSES)})",
    )
    p.add_argument(
        "--format",
        choices=FORMATS,
        default="png",
        help="png: <class>/<class>_<i>.png; dicom: one DICOM series per synthetic patient, "
        "<class>/<patient>/IM0001... (default: png)",
    )
    p.add_argument(
        "--slices-per-patient",
        type=int,
        default=4,
        metavar="S",
        help="--format dicom: images per patient; the N images of a class make ceil(N / S) patients (default: 4)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    try:
        root = make_phantom(
            args.out,
            n_per_class=args.n_per_class,
            size=args.size,
            seed=args.seed,
            classes=tuple(args.classes),
            format=args.format,
            slices_per_patient=args.slices_per_patient,
        )
    except ValueError as err:
        parser.error(str(err))
    counts = ", ".join(f"{name}={args.n_per_class}" for name in args.classes)
    kind = "PNGs" if args.format == "png" else "DICOM images"
    print(
        f"wrote {args.n_per_class * len(args.classes)} synthetic phantom {kind} (not real MRI), "
        f"{args.size}x{args.size} px, seed {args.seed}, to {root}: {counts}"
    )
    patients = -(-args.n_per_class // args.slices_per_patient)
    for ci, name in enumerate(args.classes):
        where = f"{args.n_per_class} files" if args.format == "png" else f"{patients} patients"
        print(f"  {root / name}/  {where}, mass: {mass_kind(ci) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
