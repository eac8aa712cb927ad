"""Whom each image belongs to, so that a patient never sits on both sides of a split or in two folds.

Slices of one patient are not near copies of each other, so the picture-based grouping of
``modules.duplicates`` cannot join them; subjects do. An image's subject comes from its file (``modules.ingest``):
a DICOM patient (``patient:<pseudonym>`` of its PatientID, else ``study:<pseudonym>``), a NIfTI volume
(``volume:<file>``), the frames of one file that names no patient (``file:<file>``); or from the user's groups
file (``group:<name>``, ``modules.groups_file``), which replaces the file's own for the images it names. Images
of one subject become one group, merged with the duplicate clusters.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

from modules.ingest import ImageRecord
from modules.sources import display_path


def path_index(records: Sequence[ImageRecord]) -> dict[str, list[int]]:
    """Every name a user may give an image by (as ``split.csv`` shows them, ``display_path``), to the images it
    names: an image's own path names it; the path of a file of several images names all of them."""
    index: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        index.setdefault(display_path(r.path), []).append(i)
        if r.file:
            index.setdefault(display_path(r.file), []).append(i)
    return index


def subjects_of(records: Sequence[ImageRecord], named: Mapping[int, str] | None = None) -> list[str]:
    """The subject of every image: ``group:<name>`` where ``named`` (image index -> a user's group) says, else
    the one its file gave ("" for none)."""
    named = named or {}
    return [f"group:{named[i]}" if i in named else r.subject for i, r in enumerate(records)]


def subject_links(subjects: Sequence[str]) -> list[list[int]]:
    """The sets of images (indices) that share a subject, for ``group_duplicates``' ``links``."""
    members: dict[str, list[int]] = {}
    for i, s in enumerate(subjects):
        if s:
            members.setdefault(s, []).append(i)
    return [idx for idx in members.values() if len(idx) > 1]


def kind_of(subject: str) -> str:
    """``patient``, ``study``, ``volume``, ``file`` or ``group``: what a subject is."""
    return subject.partition(":")[0]


def subject_summary(subjects: Sequence[str], splits: Sequence[str], groups: Sequence[str]) -> dict:
    """How many subjects there are (by kind), how they are split, and whether any straddles two splits.

    ``splits``: each image's split; ``groups``: each image's split group (subjects merged with copies), for the
    groups that hold more than one subject (copies of one image filed under two patients, say)."""
    first: dict[str, int] = {}
    for i, s in enumerate(subjects):
        if s:
            first.setdefault(s, i)
    in_splits: dict[str, set[str]] = {}
    for s, split in zip(subjects, splits, strict=True):
        if s:
            in_splits.setdefault(s, set()).add(split)
    per_group: dict[str, set[str]] = {}
    for s, g in zip(subjects, groups, strict=True):
        if s:
            per_group.setdefault(g, set()).add(s)
    by_split = Counter(next(iter(v)) for v in in_splits.values() if len(v) == 1)
    return {
        "subjects": len(first),
        "kinds": dict(sorted(Counter(kind_of(s) for s in first).items())),
        "images_with_subject": sum(1 for s in subjects if s),
        "images_without_subject": sum(1 for s in subjects if not s),
        "split": {name: by_split.get(name, 0) for name in ("train", "val", "test")},
        "across_splits": sum(1 for v in in_splits.values() if len(v) > 1),
        "groups_with_several_subjects": sum(1 for v in per_group.values() if len(v) > 1),
    }
