"""Ingest a labelled image set: a folder with one sub-folder per class, or a .zip of one.

Leak-free and hostile-input-safe by construction:

* the layout is ``root/<class>/...`` under at most one wrapping folder (``brain_tumor_dataset/yes``); the
  classes are the folders found there (two or more), or a list given by the caller;
* the format is decided from the file's content, never its extension;
* every image mode is converted explicitly to 8-bit grayscale (``L``);
* bad files (zero bytes, truncated, not an image, absurd dimensions, several frames) are skipped with a reason,
  or refused with ``strict=True``;
* nothing outside the dataset root is read: symlinks leaving the root are skipped, archives are read in
  memory (never extracted), and archive entries with ``..`` or absolute paths are refused;
* each image is decoded once and kept in memory as a ``uint8`` array, so training never decodes again.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import warnings
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, ImageOps

DEFAULT_CLASSES = ("no", "yes")
IMAGE_FORMATS = frozenset({"JPEG", "PNG", "BMP", "TIFF", "GIF", "WEBP", "MPO"})
MIN_SIDE = 16  # px: anything smaller is not a scan
MAX_PIXELS = 40_000_000  # width * height, checked from the header before any pixel is decoded
MAX_FILE_BYTES = 64 * 1024**2
MAX_ARCHIVE_BYTES = 8 * 1024**3  # total uncompressed size of an archive
MAX_COMPRESSION_RATIO = 100  # uncompressed / compressed, for entries over 1 MiB
KEEP_MAX_SIDE = 1024  # px: larger images are downscaled once, in memory, to bound the cache
IGNORED_NAMES = frozenset({"__MACOSX", "Thumbs.db", "desktop.ini"})


class DatasetError(ValueError):
    """The dataset cannot be used as given; the message says what was found and what is expected."""


@dataclass(frozen=True)
class ImageRecord:
    """One decoded image. ``pixels`` is a ``uint8`` array of shape (H, W), grayscale."""

    path: str  # relative to the dataset root, POSIX separators, e.g. "yes/Y1.jpg"
    label: str
    sha256: str  # of the file's bytes
    format: str  # from content, e.g. "JPEG"
    mode: str  # the mode the file was stored in, before conversion to L
    width: int  # of the file, before any downscaling
    height: int
    pixels: np.ndarray = field(repr=False, compare=False)


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str


@dataclass
class ImageSet:
    """A decoded, validated image set."""

    source: str
    classes: tuple[str, ...]
    records: list[ImageRecord]
    skipped: list[Skipped]
    ignored: list[str] = field(default_factory=list)  # files outside the class folders (never read)

    @property
    def labels(self) -> list[str]:
        return [r.label for r in self.records]

    @property
    def targets(self) -> np.ndarray:
        """Class indices (position in ``classes``), shape (N,)."""
        index = {c: i for i, c in enumerate(self.classes)}
        return np.array([index[r.label] for r in self.records], dtype=np.int64)

    def class_counts(self) -> dict[str, int]:
        counts = Counter(self.labels)
        return {c: counts.get(c, 0) for c in self.classes}

    @property
    def fingerprint(self) -> str:
        """sha256 over the sorted ``label:sha256`` lines: names and order do not matter, content and labels do."""
        lines = sorted(f"{r.label}:{r.sha256}" for r in self.records)
        return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def display_path(path: str) -> str:
    """A printable form of a path that may hold undecodable bytes (kept as surrogate escapes)."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


# ----------------------------------------------------------------------------- sources
# A source is a list of entries: (relative parts, reader or None, skip reason or None).
Reader = Callable[[], bytes]


@dataclass(frozen=True)
class _Entry:
    parts: tuple[str, ...]
    read: Reader | None = None
    problem: str | None = None


def _is_hidden(parts: Sequence[str]) -> bool:
    return any(p.startswith(".") or p in IGNORED_NAMES for p in parts)


def _read_limited(path: Path) -> bytes:
    with open(path, "rb") as fh:
        data = fh.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise _Skip(f"file larger than {MAX_FILE_BYTES // 1024**2} MiB")
    return data


def _folder_entries(root: Path) -> tuple[list[_Entry], set[tuple[str, ...]]]:
    """Walk a folder without following links; returns file entries and the set of directories."""
    real_root = root.resolve()
    entries: list[_Entry] = []
    dirs: set[tuple[str, ...]] = set()

    def unreadable(err: OSError) -> None:  # os.walk would silently leave out a folder it cannot list
        rel = Path(err.filename).relative_to(root).parts if err.filename else ()
        if not rel:
            raise DatasetError(f"{root}: cannot read the folder ({err.strerror or err})") from None
        dirs.add(tuple(rel))
        entries.append(_Entry(tuple(rel), problem=f"unreadable folder ({err.strerror or err})"))

    for dirpath, dirnames, filenames in os.walk(root, followlinks=False, onerror=unreadable):
        rel = Path(dirpath).relative_to(root).parts
        dirs.add(tuple(rel))
        for name in list(dirnames):
            full = Path(dirpath) / name
            if full.is_symlink():
                dirnames.remove(name)
                entries.append(_Entry((*rel, name), problem="symlinked folder (not followed)"))
        for name in filenames:
            full = Path(dirpath) / name
            parts = (*rel, name)
            entries.append(_folder_entry(full, parts, real_root))
    return entries, dirs


def _folder_entry(full: Path, parts: tuple[str, ...], real_root: Path) -> _Entry:
    if full.is_symlink():
        target = full.resolve()
        if not target.is_relative_to(real_root):
            return _Entry(parts, problem="symlink pointing outside the dataset root")
        if not target.is_file():
            return _Entry(parts, problem="symlink to something that is not a file")
    try:
        mode = full.stat().st_mode
    except OSError as exc:
        return _Entry(parts, problem=f"cannot stat: {exc.strerror}")
    if not stat.S_ISREG(mode):
        return _Entry(parts, problem="not a regular file")
    return _Entry(parts, read=lambda: _read_limited(full))


def _zip_entries(path: Path) -> tuple[list[_Entry], set[tuple[str, ...]]]:
    """List a zip's entries without extracting anything; unsafe names and bombs become problems."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DatasetError(f"{path}: not a readable zip archive ({exc})") from None
    entries: list[_Entry] = []
    dirs: set[tuple[str, ...]] = {()}
    total = 0
    for info in zf.infolist():
        name = info.filename
        pure = PurePosixPath(name.replace("\\", "/"))
        if pure.is_absolute() or ".." in pure.parts or (pure.parts and ":" in pure.parts[0]):
            entries.append(_Entry((display_path(name),), problem="unsafe path in archive (absolute or '..')"))
            continue
        parts = tuple(p for p in pure.parts if p not in ("", "."))
        if not parts:
            continue
        for i in range(1, len(parts)):
            dirs.add(parts[:i])
        if info.is_dir():
            dirs.add(parts)
            continue
        if stat.S_ISLNK(info.external_attr >> 16):
            entries.append(_Entry(parts, problem="symlink inside archive (not followed)"))
            continue
        total += info.file_size
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > MAX_FILE_BYTES:
            entries.append(
                _Entry(parts, problem=f"archive entry larger than {MAX_FILE_BYTES // 1024**2} MiB")
            )
        elif info.file_size > 1024**2 and ratio > MAX_COMPRESSION_RATIO:
            entries.append(_Entry(parts, problem=f"compression ratio {ratio:.0f}:1 (possible zip bomb)"))
        elif total > MAX_ARCHIVE_BYTES:
            raise DatasetError(
                f"{path}: archive expands to more than {MAX_ARCHIVE_BYTES // 1024**3} GiB; "
                "expected a small image set (possible zip bomb)"
            )
        else:
            entries.append(_Entry(parts, read=_zip_reader(zf, info)))
    return entries, dirs


def _zip_reader(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> Reader:
    def read() -> bytes:
        try:
            with zf.open(info) as fh:
                data = fh.read(MAX_FILE_BYTES + 1)
        except OSError:
            raise
        except Exception as exc:  # bad CRC, corrupt deflate stream, encrypted or unknown compression, ...
            raise _Skip(f"corrupt or unreadable archive entry ({type(exc).__name__}: {exc})") from None
        if len(data) > MAX_FILE_BYTES:  # the header lied about the size
            raise _Skip(f"archive entry larger than {MAX_FILE_BYTES // 1024**2} MiB")
        return data

    return read


# ----------------------------------------------------------------------------- layout
def _level(
    entries: list[_Entry], dirs: set[tuple[str, ...]], prefix: tuple[str, ...], source: str
) -> tuple[dict[str, str], list[_Entry]]:
    """The folders at ``prefix`` (lower-case name -> name as spelled on disk, hidden ones left out) and the
    usable files there. Folders whose names differ only in case raise ``DatasetError``."""
    subdirs = sorted(
        d[-1] for d in dirs if len(d) == len(prefix) + 1 and d[:-1] == prefix and not _is_hidden(d[-1:])
    )
    # entries with a problem (unsafe archive paths, escaping links) are reported as skipped, and must not
    # turn a wrapping folder into an "unexpected layout"
    files_here = [
        e
        for e in entries
        if len(e.parts) == len(prefix) + 1
        and e.parts[:-1] == prefix
        and not _is_hidden(e.parts)
        and e.problem is None
    ]
    by_lower: dict[str, list[str]] = {}
    for d in subdirs:
        by_lower.setdefault(d.lower(), []).append(d)
    clashes = sorted(v for v in by_lower.values() if len(v) > 1)
    if clashes:
        raise DatasetError(
            f"{source}: folders whose names differ only in case: {clashes}; "
            "expected one folder per class, each name used once"
        )
    return {k: v[0] for k, v in by_lower.items()}, files_here


def _find_class_dirs(
    entries: list[_Entry],
    dirs: set[tuple[str, ...]],
    classes: Sequence[str] | None,
    source: str,
) -> tuple[tuple[str, ...], dict[str, str]]:
    """Return the prefix of the class folders and a map class -> folder name as spelled on disk.

    ``classes`` None: every (non-hidden) folder there is a class, named by its folder name in lower case."""
    if classes is None:
        return _discover_class_dirs(entries, dirs, source)
    prefix: tuple[str, ...] = ()
    for _ in range(2):  # the root itself, or one wrapping folder
        by_lower, files_here = _level(entries, dirs, prefix, source)
        wanted = {c.lower() for c in classes}
        present = wanted & by_lower.keys()
        if present:
            missing = sorted(wanted - present)
            if missing:
                raise DatasetError(
                    f"{source}: found class folders {sorted(by_lower[k] + '/' for k in present)} but no "
                    f"{', '.join(m + '/' for m in missing)}; expected one folder per class: "
                    f"{', '.join(c + '/' for c in classes)}"
                )
            extra = sorted(by_lower[k] for k in by_lower.keys() - wanted)
            if extra:
                raise DatasetError(
                    f"{source}: unexpected folder(s) {[e + '/' for e in extra]} next to the class folders; "
                    f"expected only {', '.join(c + '/' for c in classes)} (remove the others, or point at one "
                    "dataset copy)"
                )
            return prefix, {c: by_lower[c.lower()] for c in classes}
        if len(by_lower) == 1 and not files_here and not prefix:
            prefix = (next(iter(by_lower.values())),)
            continue
        break
    shown = "/".join(prefix) + "/" if prefix else "the top level"
    raise DatasetError(
        f"{source}: unexpected layout: at {shown} found folders {sorted(by_lower.values())[:10]} and "
        f"{len(files_here)} file(s); expected class folders {', '.join(c + '/' for c in classes)}, optionally "
        "inside one wrapping folder"
    )


def _discover_class_dirs(
    entries: list[_Entry], dirs: set[tuple[str, ...]], source: str
) -> tuple[tuple[str, ...], dict[str, str]]:
    """Every folder at the top level (or inside a single wrapping folder) is a class; two or more needed."""
    prefix: tuple[str, ...] = ()
    by_lower, files_here = _level(entries, dirs, prefix, source)
    if len(by_lower) == 1 and not files_here:  # one wrapping folder, e.g. brain_tumor_dataset/
        prefix = (next(iter(by_lower.values())),)
        by_lower, files_here = _level(entries, dirs, prefix, source)
    shown = "/".join(prefix) + "/" if prefix else "the top level"
    if len(by_lower) < 2:
        if by_lower:
            found = f"only one class folder ({next(iter(by_lower.values()))}/) at {shown}"
        elif prefix and files_here:  # a lone folder of images: one class
            found = f"only one class folder ({prefix[0]}/, {len(files_here)} file(s))"
        else:
            found = f"no folder and {len(files_here)} file(s) at {shown}"
        raise DatasetError(
            f"{source}: unexpected layout: found {found}; expected two or more class folders (one per class, "
            "e.g. yes/ and no/), optionally inside one wrapping folder"
        )
    # a class folder that holds a folder named like another class is (part of) a second copy of the set (the
    # Kaggle archive ships yes/, no/ and brain_tumor_dataset/{yes,no}/): refuse it rather than train on it
    copies = []
    for lower, name in by_lower.items():
        inner, _ = _level(entries, dirs, (*prefix, name), source)
        if inner.keys() & (by_lower.keys() - {lower}):
            copies.append(name + "/")
    if copies:
        raise DatasetError(
            f"{source}: folder(s) {sorted(copies)} at {shown} hold their own copies of the class folders; "
            "expected one folder per class (remove the copies, or point at one dataset copy)"
        )
    return prefix, {lower: by_lower[lower] for lower in sorted(by_lower)}


# ----------------------------------------------------------------------------- decoding
class _Skip(Exception):
    """A file is unusable; the message is the reason shown to the user."""


def _to_gray(img: Image.Image) -> np.ndarray:
    """Convert any supported mode explicitly to 8-bit grayscale, shape (H, W)."""
    mode = img.mode
    if mode == "L":
        return np.asarray(img, dtype=np.uint8).copy()
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16-bit / integer / float scans: window to the image's own range (no fixed 0-65535 assumption)
        arr = np.asarray(img.convert("I") if mode.startswith("I;16") else img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    if mode == "P":
        img = img.convert("RGBA")  # the palette may carry transparency
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))  # scans have a black background
        return np.asarray(Image.alpha_composite(background, rgba).convert("L"), dtype=np.uint8).copy()
    if mode in ("RGB", "CMYK", "YCbCr", "LAB", "HSV", "1", "RGBX"):
        return np.asarray(img.convert("RGB").convert("L"), dtype=np.uint8).copy()
    raise _Skip(f"unsupported image mode {mode!r}")


def decode_image(data: bytes) -> tuple[np.ndarray, str, str, int, int]:
    """Decode bytes to (pixels, format, mode, width, height) or raise ``_Skip`` with the reason."""
    if not data:
        raise _Skip("empty file (0 bytes)")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError:
            raise _Skip("image dimensions too large (decompression bomb)") from None
        except Image.DecompressionBombWarning:
            raise _Skip("image dimensions too large (decompression bomb)") from None
        except Exception:
            raise _Skip("not an image (content is not a known image format)") from None
        fmt = img.format or "unknown"
        if fmt not in IMAGE_FORMATS:
            raise _Skip(f"unsupported image format {fmt}")
        width, height = img.size
        if width * height > MAX_PIXELS:
            raise _Skip(f"absurd dimensions {width}x{height} (more than {MAX_PIXELS:,} pixels)")
        if min(width, height) < MIN_SIDE:
            raise _Skip(f"image too small: {width}x{height} (expected at least {MIN_SIDE} px a side)")
        frames = getattr(img, "n_frames", 1)
        if frames > 1:
            raise _Skip(f"{frames} frames (animated or multi-page); expected a single slice")
        mode = img.mode
        try:
            img.load()
            img = ImageOps.exif_transpose(img) or img
        except Exception as exc:
            raise _Skip(f"cannot decode {fmt} data ({exc})") from None
    return _to_gray(img), fmt, mode, width, height


def _shrink(pixels: np.ndarray, max_side: int) -> np.ndarray:
    h, w = pixels.shape
    if max(h, w) <= max_side:
        return pixels
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0))


# ----------------------------------------------------------------------------- public entry point
def load_image_set(
    path: str | os.PathLike,
    *,
    classes: Sequence[str] | None = None,
    strict: bool = False,
    keep_max_side: int = KEEP_MAX_SIDE,
    warn: Callable[[str], None] | None = None,
) -> ImageSet:
    """Read and validate an image set from a folder or a .zip.

    ``classes`` None: the classes come from the data: every folder at the top level (or inside a single
    wrapping folder) is one, named by its folder name in lower case, sorted by name (so the brain-MRI set
    gives ``("no", "yes")``); two or more are required, and hidden folders (``.x``, ``__MACOSX``) are not
    classes. A list of names instead requires exactly those folders (matched ignoring case) and no others.
    Bad files are skipped (each reported through ``warn`` with its reason) or, with ``strict``, raise
    ``DatasetError``. An unexpected layout, a missing or empty class, or no images at all raise
    ``DatasetError`` with a message that says what was found and what was expected.
    """
    src = Path(path)
    source = display_path(str(src))  # printable even when the path holds undecodable bytes
    if not src.exists():
        raise DatasetError(
            f"{source}: no such file or folder; expected a folder with one sub-folder per class "
            "(e.g. yes/ and no/) or a .zip of one"
        )
    if src.is_dir():
        entries, dirs = _folder_entries(src)
    elif src.is_file() and zipfile.is_zipfile(src):  # is_file first: is_zipfile would block on a FIFO
        entries, dirs = _zip_entries(src)
    else:
        raise DatasetError(
            f"{source}: neither a folder nor a zip archive; expected a folder with one sub-folder per class "
            "or a .zip of one"
        )
    prefix, spelled = _find_class_dirs(entries, dirs, classes, source)
    classes = tuple(spelled)

    records: list[ImageRecord] = []
    skipped: list[Skipped] = []
    counts = Counter()
    for label in classes:
        base = (*prefix, spelled[label])
        mine = sorted((e for e in entries if e.parts[: len(base)] == base), key=lambda e: e.parts)
        for entry in mine:
            rel = "/".join(entry.parts[len(prefix) :])
            if _is_hidden(entry.parts[len(base) :]):
                skipped.append(Skipped(rel, "hidden or system file"))
                continue
            record, reason = _decode_entry(entry, rel, label, keep_max_side)
            if record is None:
                skipped.append(Skipped(rel, reason))
            else:
                records.append(record)
                counts[label] += 1
    # entries outside the class folders are never read: unsafe ones are reported, others (README, manifest) ignored
    ignored: list[str] = []
    class_dirs = {(*prefix, spelled[label]) for label in classes}  # unreadable class folders: reported above
    for entry in entries:
        if entry.parts in class_dirs:
            continue
        if entry.parts[: len(prefix)] != prefix or len(entry.parts) == len(prefix) + 1:
            if entry.problem:
                skipped.append(Skipped("/".join(entry.parts), entry.problem))
            elif not _is_hidden(entry.parts):
                ignored.append("/".join(entry.parts))

    for item in skipped:
        if strict:
            raise DatasetError(
                f"{source}: {display_path(item.path)}: {item.reason} (--strict refuses bad files)"
            )
        if warn is not None:
            warn(f"skipped {display_path(item.path)}: {item.reason}")
    empty = [c for c in classes if counts[c] == 0]
    if empty:
        found = ", ".join(f"{c}/: {counts[c]}" for c in classes)
        raise DatasetError(
            f"{source}: no usable images in {', '.join(c + '/' for c in empty)} (found {found}, "
            f"{len(skipped)} skipped); expected at least one image per class"
        )
    return ImageSet(source=source, classes=classes, records=records, skipped=skipped, ignored=ignored)


def _decode_entry(entry: _Entry, rel: str, label: str, keep_max_side: int) -> tuple[ImageRecord | None, str]:
    if entry.problem is not None:
        return None, entry.problem
    assert entry.read is not None
    try:
        data = entry.read()
        pixels, fmt, mode, width, height = decode_image(data)
    except _Skip as skip:
        return None, str(skip)
    except PermissionError:
        return None, "permission denied (unreadable file)"
    except OSError as exc:
        return None, f"cannot read ({exc.strerror or exc})"
    record = ImageRecord(
        path=rel,
        label=label,
        sha256=hashlib.sha256(data).hexdigest(),
        format=fmt,
        mode=mode,
        width=width,
        height=height,
        pixels=_shrink(pixels, keep_max_side),
    )
    return record, ""


def iter_problems(image_set: ImageSet) -> Iterator[str]:
    """Human-readable lines for every skipped file."""
    for item in image_set.skipped:
        yield f"{display_path(item.path)}: {item.reason}"
