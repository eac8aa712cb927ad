"""Ingest a labelled image set: a folder with one sub-folder per class, or a .zip of one.

Duplicate-aware and hostile-input-safe by construction:

* the layout is ``root/<class>/...`` under at most one wrapping folder (``brain_tumor_dataset/yes``); the
  classes are the folders found there (two or more), or a list given by the caller;
* the format is decided from the file's content, never its extension: pictures (JPEG, PNG, ...), DICOM files
  (one image per frame) and NIfTI volumes (the chosen slices), mixed in one set;
* every image mode is converted explicitly to 8-bit grayscale (``L``), clinical values through their window;
* an image knows its file and, where the file says, its subject (a DICOM patient, a NIfTI volume), so that
  ``modules.subjects`` can keep a patient on one side of every split;
* bad files (zero bytes, truncated, not an image, absurd dimensions, several frames) are skipped with a reason,
  or refused with ``strict=True``;
* nothing outside the dataset root is read: symlinks leaving the root are skipped, archives are read in
  memory (never extracted), and archive entries with ``..`` or absolute paths are refused;
* each image is decoded once and kept in memory as a ``uint8`` array, so training never decodes again.

The walk is ``modules.sources``, the layout ``modules.class_folders``, the decoding ``modules.scans``.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from modules.class_folders import find_class_dirs
from modules.decode import KEEP_MAX_SIDE, Scan, shrink
from modules.nifti import SliceChoice
from modules.scans import read_scan
from modules.sources import DatasetError, Entry, display_path, folder_entries, is_hidden, zip_entries


@dataclass(frozen=True)
class ImageRecord:
    """One decoded image. ``pixels`` is a ``uint8`` array of shape (H, W), grayscale."""

    path: str  # relative to the dataset root, POSIX separators, e.g. "yes/Y1.jpg"; "yes/v.nii.gz#axial-012"
    label: str
    sha256: str  # of the file's bytes; of "<that>#<name>" for one of several images of a file
    format: str  # from content, e.g. "JPEG", "DICOM", "NIfTI-1"
    mode: str  # how the file stored it, before conversion to L (a Pillow mode, a DICOM photometric, a dtype)
    width: int  # of the file's image, before square pixels or any downscaling
    height: int
    pixels: np.ndarray = field(repr=False, compare=False)
    file: str = ""  # the file it is one image of, when the file holds several ("": ``path`` is the file)
    subject: str = ""  # whom it belongs to by its file: "patient:<pseudonym>", "volume:<file>", ... or ""
    intensity: str = "as stored"  # how its grey levels were made (a DICOM window, a percentile window)

    @property
    def source_file(self) -> str:
        """The path of the file this image was read from."""
        return self.file or self.path


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
    blank: int = 0  # frames and slices left out of their files: every pixel of them has one value
    choice: SliceChoice = field(default_factory=SliceChoice)  # the slices taken from NIfTI volumes

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


def load_image_set(
    path: str | os.PathLike,
    *,
    classes: Sequence[str] | None = None,
    strict: bool = False,
    keep_max_side: int = KEEP_MAX_SIDE,
    warn: Callable[[str], None] | None = None,
    choice: SliceChoice | None = None,
) -> ImageSet:
    """Read and validate an image set from a folder or a .zip.

    ``classes`` None: the classes come from the data: every folder at the top level (or inside a single
    wrapping folder) is one, named by its folder name in lower case, sorted by name (so the brain-MRI set
    gives ``("no", "yes")``); two or more are required, and hidden folders (``.x``, ``__MACOSX``) are not
    classes. A list of names instead requires exactly those folders (matched ignoring case) and no others.
    ``choice``: the slices a NIfTI volume gives (default: every axial slice with contrast).
    Bad files are skipped (each reported through ``warn`` with its reason) or, with ``strict``, raise
    ``DatasetError``. An unexpected layout, a missing or empty class, or no images at all raise
    ``DatasetError`` with a message that says what was found and what was expected.
    """
    src = Path(path)
    source = display_path(str(src))  # printable even when the path holds undecodable bytes
    entries, dirs = _entries(src, source)
    prefix, spelled = find_class_dirs(entries, dirs, classes, source)
    classes = tuple(spelled)

    choice = choice or SliceChoice()
    records, skipped, blank = _read_class_folders(entries, prefix, spelled, keep_max_side, choice)
    counts = Counter(r.label for r in records)
    class_dirs = {(*prefix, spelled[label]) for label in classes}  # unreadable class folders: reported above
    outside, ignored = _outside_class_folders(entries, prefix, class_dirs)
    skipped += outside

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
    return ImageSet(
        source=source,
        classes=classes,
        records=records,
        skipped=skipped,
        ignored=ignored,
        blank=blank,
        choice=choice,
    )


def _read_class_folders(
    entries: list[Entry],
    prefix: tuple[str, ...],
    spelled: dict[str, str],
    keep_max_side: int,
    choice: SliceChoice,
) -> tuple[list[ImageRecord], list[Skipped], int]:
    """Decode every file under the class folders (``spelled``: class -> its folder's name under ``prefix``),
    class by class in order, each folder's files sorted by path: (the images, the files skipped with why, the
    blank frames and slices left out)."""
    records: list[ImageRecord] = []
    skipped: list[Skipped] = []
    blank = 0
    for label, folder in spelled.items():
        base = (*prefix, folder)
        mine = sorted((e for e in entries if e.parts[: len(base)] == base), key=lambda e: e.parts)
        for entry in mine:
            rel = "/".join(entry.parts[len(prefix) :])
            if is_hidden(entry.parts[len(base) :]):
                skipped.append(Skipped(rel, "hidden or system file"))
                continue
            scan, reason = read_scan(entry.read, entry.problem, choice)
            if scan is None:
                skipped.append(Skipped(rel, reason))
            else:
                records += scan_records(scan, rel, label, keep_max_side)
                blank += scan.blank
    return records, skipped, blank


def scan_records(scan: Scan, rel: str, label: str, keep_max_side: int = KEEP_MAX_SIDE) -> list[ImageRecord]:
    """The records of a decoded file at ``rel``: one per image, named ``rel#<name>`` when the file holds named
    images (frames, slices). Images of a volume, or of a multi-frame file whose metadata name no patient,
    share the subject ``<unit>:<rel>``, so that they stay together."""
    digest = hashlib.sha256(scan.data).hexdigest()
    subject = scan.subject or (f"{scan.unit}:{rel}" if scan.unit else "")
    out = []
    for image in scan.images:
        named = bool(image.name)
        out.append(
            ImageRecord(
                path=f"{rel}#{image.name}" if named else rel,
                label=label,
                sha256=hashlib.sha256(f"{digest}#{image.name}".encode()).hexdigest() if named else digest,
                format=scan.format,
                mode=scan.mode,
                width=scan.width,
                height=scan.height,
                pixels=shrink(image.pixels, keep_max_side),
                file=rel if named else "",
                subject=subject,
                intensity=scan.intensity,
            )
        )
    return out


def _entries(src: Path, source: str) -> tuple[list[Entry], set[tuple[str, ...]]]:
    """The entries and folders of a folder or a zip archive (``source``: ``src`` as printed)."""
    if not src.exists():
        raise DatasetError(
            f"{source}: no such file or folder; expected a folder with one sub-folder per class "
            "(e.g. yes/ and no/) or a .zip of one"
        )
    if src.is_dir():
        return folder_entries(src)
    if src.is_file() and zipfile.is_zipfile(src):  # is_file first: is_zipfile would block on a FIFO
        return zip_entries(src)
    raise DatasetError(
        f"{source}: neither a folder nor a zip archive; expected a folder with one sub-folder per class "
        "or a .zip of one"
    )


def _outside_class_folders(
    entries: list[Entry], prefix: tuple[str, ...], class_dirs: set[tuple[str, ...]]
) -> tuple[list[Skipped], list[str]]:
    """The entries outside the class folders, which are never read: (the unsafe ones, reported as skipped;
    the paths of the others, e.g. README or a manifest, listed as ignored)."""
    skipped: list[Skipped] = []
    ignored: list[str] = []
    for entry in entries:
        if entry.parts in class_dirs:
            continue
        if entry.parts[: len(prefix)] != prefix or len(entry.parts) == len(prefix) + 1:
            if entry.problem:
                skipped.append(Skipped("/".join(entry.parts), entry.problem))
            elif not is_hidden(entry.parts):
                ignored.append("/".join(entry.parts))
    return skipped, ignored
