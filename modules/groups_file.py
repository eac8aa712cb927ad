"""A groups file (``--groups FILE.csv``): the subject of each image, for any format, given by the user.

CSV, one row per path: ``path,group``. A path is relative to the data root as ``tuning.data`` and
``split.csv`` show it: an image (``yes/Y1.jpg``, ``yes/sub-01.nii.gz#axial-045``) or a file, which names every
image of it (``yes/sub-01.nii.gz``, a multi-frame DICOM). An optional header ``path,group``; blank lines and
lines starting with ``#`` are ignored. Every image whose file names no subject (a picture; a DICOM without
PatientID or study) must have a row, so that no patient is left to chance; images that have one (DICOM
patients, NIfTI volumes) may, and the row replaces it.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from modules.ingest import ImageSet
from modules.sources import DatasetError, display_path
from modules.subjects import path_index

SHOWN = 5


def _shown(items: Sequence[str]) -> str:
    return ", ".join(items[:SHOWN]) + (f" and {len(items) - SHOWN} more" if len(items) > SHOWN else "")


def read_groups_file(
    path: str | os.PathLike, images: ImageSet, *, warn: Callable[[str], None] | None = None
) -> dict[int, str]:
    """The user's group of each image named (image index -> group name). Raises ``DatasetError`` for a missing
    file, a malformed row, a path that is no file of the set, an image given two groups, or an image left
    without a subject; a path of a file that was skipped (not an image) is a warning."""
    source = Path(path)
    flag = f"--groups {display_path(str(path))}"
    if not source.is_file():
        raise DatasetError(f"{flag}: no such file; expected a CSV of path,group rows")
    index = path_index(images.records)
    skipped = {display_path(s.path): s.reason for s in images.skipped}
    named: dict[int, tuple[str, int]] = {}  # image -> (group, line)
    unknown: list[str] = []
    for line, path_text, group in _rows(source, flag):
        if path_text in skipped:
            if warn is not None:
                warn(f"{flag}: line {line} names {path_text}, which was skipped ({skipped[path_text]})")
            continue
        if path_text not in index:
            unknown.append(f"{path_text} (line {line})")
            continue
        for i in index[path_text]:
            before = named.get(i)
            if before is not None and before[0] != group:
                raise DatasetError(
                    f"{flag}: line {line} puts {display_path(images.records[i].path)} in group {group!r}, line "
                    f"{before[1]} in {before[0]!r}; expected one group per image"
                )
            named[i] = (group, line)
    if unknown:
        raise DatasetError(
            f"{flag}: {_shown(unknown)} not among the files of the set; expected paths as split.csv shows "
            "them (e.g. yes/Y1.jpg, or a volume yes/sub-01.nii.gz)"
        )
    missing = [display_path(r.path) for i, r in enumerate(images.records) if i not in named and not r.subject]
    if missing:
        raise DatasetError(
            f"{flag}: {len(missing)} image(s) without a group ({_shown(missing)}); expected a row for every "
            "image whose file names no patient (DICOM patients and NIfTI volumes are grouped already)"
        )
    _warn_split_subjects(images, named, flag, warn)
    return {i: g for i, (g, _) in named.items()}


def _rows(source: Path, flag: str) -> list[tuple[int, str, str]]:
    """(line, path, group) of every row; a header ``path,group`` is left out."""
    rows = []
    try:
        with source.open(newline="", encoding="utf-8") as fh:
            for line, row in enumerate(csv.reader(fh), start=1):
                cells = [c.strip() for c in row]
                if not any(cells) or cells[0].startswith("#"):
                    continue
                if [c.lower() for c in cells] == ["path", "group"] and not rows:
                    continue
                if len(cells) != 2 or not all(cells):
                    raise DatasetError(
                        f"{flag}: line {line} has {len([c for c in cells if c])} non-empty cell(s) of "
                        f"{len(cells)}; expected two: path,group"
                    )
                rows.append((line, cells[0], cells[1]))
    except UnicodeDecodeError:
        raise DatasetError(f"{flag}: not UTF-8 text; expected a CSV of path,group rows") from None
    return rows


def _warn_split_subjects(images: ImageSet, named: dict[int, tuple[str, int]], flag: str, warn) -> None:
    """Warn where the rows part the images of one patient or volume (some in different groups, or some named
    and some not): they may then sit on both sides of a split, since the user's groups are taken as given."""
    if warn is None:
        return
    parts: dict[str, set[str]] = {}
    for i, r in enumerate(images.records):
        if r.subject:
            parts.setdefault(r.subject, set()).add(repr(named[i][0]) if i in named else "(no row)")
    for subject, got in sorted(parts.items()):
        if len(got) > 1:
            warn(
                f"{flag} parts the images of {subject} ({', '.join(sorted(got))}); they may sit on both sides "
                "of a split"
            )
