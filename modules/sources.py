"""Walk a dataset source, a folder or a .zip of one, into entries, without reading anything outside it.

An entry is a file's path inside the source and either a reader of its bytes or the reason it cannot be read.
Symlinks leaving the root are skipped, archives are read in memory (never extracted), archive entries with
``..`` or absolute paths are refused, and no read returns more than ``MAX_FILE_BYTES``.
"""

from __future__ import annotations

import os
import stat
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from modules.decode import UnreadableImage

MAX_FILE_BYTES = 64 * 1024**2
MAX_ARCHIVE_BYTES = 8 * 1024**3  # total uncompressed size of an archive
MAX_COMPRESSION_RATIO = 100  # uncompressed / compressed, for entries over 1 MiB
IGNORED_NAMES = frozenset({"__MACOSX", "Thumbs.db", "desktop.ini"})


class DatasetError(ValueError):
    """The dataset cannot be used as given; the message says what was found and what is expected."""


def display_path(path: str) -> str:
    """A printable form of a path that may hold undecodable bytes (kept as surrogate escapes)."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


# A source is a list of entries: (relative parts, reader or None, skip reason or None).
Reader = Callable[[], bytes]


@dataclass(frozen=True)
class Entry:
    """One file of a source: its path inside the root, and a reader of its bytes or why it is not read."""

    parts: tuple[str, ...]
    read: Reader | None = None
    problem: str | None = None


def is_hidden(parts: Sequence[str]) -> bool:
    """Whether a path (its parts) holds a hidden (``.x``) or system (``__MACOSX``, ``Thumbs.db``) name."""
    return any(p.startswith(".") or p in IGNORED_NAMES for p in parts)


def read_limited(path: Path) -> bytes:
    """The bytes of a file; raises ``UnreadableImage`` for one larger than ``MAX_FILE_BYTES``."""
    with open(path, "rb") as fh:
        data = fh.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise UnreadableImage(f"file larger than {MAX_FILE_BYTES // 1024**2} MiB")
    return data


def folder_entries(root: Path) -> tuple[list[Entry], set[tuple[str, ...]]]:
    """Walk a folder without following links; returns file entries and the set of directories."""
    real_root = root.resolve()
    entries: list[Entry] = []
    dirs: set[tuple[str, ...]] = set()

    def unreadable(err: OSError) -> None:  # os.walk would silently leave out a folder it cannot list
        rel = Path(err.filename).relative_to(root).parts if err.filename else ()
        if not rel:
            raise DatasetError(f"{root}: cannot read the folder ({err.strerror or err})") from None
        dirs.add(tuple(rel))
        entries.append(Entry(tuple(rel), problem=f"unreadable folder ({err.strerror or err})"))

    for dirpath, dirnames, filenames in os.walk(root, followlinks=False, onerror=unreadable):
        rel = Path(dirpath).relative_to(root).parts
        dirs.add(tuple(rel))
        for name in list(dirnames):
            full = Path(dirpath) / name
            if full.is_symlink():
                dirnames.remove(name)
                entries.append(Entry((*rel, name), problem="symlinked folder (not followed)"))
        for name in filenames:
            full = Path(dirpath) / name
            parts = (*rel, name)
            entries.append(_folder_entry(full, parts, real_root))
    return entries, dirs


def _folder_entry(full: Path, parts: tuple[str, ...], real_root: Path) -> Entry:
    if full.is_symlink():
        target = full.resolve()
        if not target.is_relative_to(real_root):
            return Entry(parts, problem="symlink pointing outside the dataset root")
        if not target.is_file():
            return Entry(parts, problem="symlink to something that is not a file")
    try:
        mode = full.stat().st_mode
    except OSError as exc:
        return Entry(parts, problem=f"cannot stat: {exc.strerror}")
    if not stat.S_ISREG(mode):
        return Entry(parts, problem="not a regular file")
    return Entry(parts, read=lambda: read_limited(full))


def zip_entries(path: Path) -> tuple[list[Entry], set[tuple[str, ...]]]:
    """List a zip's entries without extracting anything; unsafe names and bombs become problems."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DatasetError(f"{path}: not a readable zip archive ({exc})") from None
    entries: list[Entry] = []
    dirs: set[tuple[str, ...]] = {()}
    total = 0
    for info in zf.infolist():
        name = info.filename
        pure = PurePosixPath(name.replace("\\", "/"))
        if pure.is_absolute() or ".." in pure.parts or (pure.parts and ":" in pure.parts[0]):
            entries.append(Entry((display_path(name),), problem="unsafe path in archive (absolute or '..')"))
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
            entries.append(Entry(parts, problem="symlink inside archive (not followed)"))
            continue
        total += info.file_size
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > MAX_FILE_BYTES:
            entries.append(Entry(parts, problem=f"archive entry larger than {MAX_FILE_BYTES // 1024**2} MiB"))
        elif info.file_size > 1024**2 and ratio > MAX_COMPRESSION_RATIO:
            entries.append(Entry(parts, problem=f"compression ratio {ratio:.0f}:1 (possible zip bomb)"))
        elif total > MAX_ARCHIVE_BYTES:
            raise DatasetError(
                f"{path}: archive expands to more than {MAX_ARCHIVE_BYTES // 1024**3} GiB; "
                "expected a small image set (possible zip bomb)"
            )
        else:
            entries.append(Entry(parts, read=_zip_reader(zf, info)))
    return entries, dirs


def _zip_reader(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> Reader:
    def read() -> bytes:
        try:
            with zf.open(info) as fh:
                data = fh.read(MAX_FILE_BYTES + 1)
        except OSError:
            raise
        except Exception as exc:  # bad CRC, corrupt deflate stream, encrypted or unknown compression, ...
            raise UnreadableImage(
                f"corrupt or unreadable archive entry ({type(exc).__name__}: {exc})"
            ) from None
        if len(data) > MAX_FILE_BYTES:  # the header lied about the size
            raise UnreadableImage(f"archive entry larger than {MAX_FILE_BYTES // 1024**2} MiB")
        return data

    return read
