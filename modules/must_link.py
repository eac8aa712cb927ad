"""A must-link list: sets of images that must stay on one side of every split and fold, although no rule finds
them (copies that look the same by eye below the near-duplicate threshold, scans of one patient).

The file is CSV: one set per row, two or more paths relative to the data root as ``tuning.data`` and
``split.csv`` show them (``yes/Y113.JPG``; the path of a file of several images, a volume or a multi-frame
DICOM, names all of them); blank lines and lines starting with ``#`` are ignored.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping
from pathlib import Path

from modules.sources import DatasetError, display_path


def read_must_link(path: str | os.PathLike, index: Mapping[str, list[int]]) -> list[list[int]]:
    """The sets of ``path`` as image indices; ``index``: each name of the set's images (as shown) to the images
    it names (``modules.subjects.path_index``). Raises ``DatasetError`` for a missing file, a row of fewer than
    two paths, or a path that is not an image of the set."""
    source = Path(path)
    if not source.is_file():
        raise DatasetError(
            f"--must-link {display_path(str(path))}: no such file; expected a CSV of image paths"
        )
    sets, unknown = [], []
    with source.open(newline="", encoding="utf-8") as fh:
        for line, row in enumerate(csv.reader(fh), start=1):
            cells = [c.strip() for c in row if c.strip()]
            if not cells or cells[0].startswith("#"):
                continue
            if len(cells) < 2:
                raise DatasetError(
                    f"--must-link {source}: line {line} names {len(cells)} path; expected two or more per row"
                )
            unknown += [f"{c} (line {line})" for c in cells if c not in index]
            sets.append([i for c in cells if c in index for i in index[c]])
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise DatasetError(
            f"--must-link {source}: {shown} not among the images of the set; expected paths as split.csv "
            "shows them (e.g. yes/Y1.jpg)"
        )
    return sets
