"""From a path to a duplicate-aware grouped, audited split: ingest, subjects (patients, volumes, a user's groups)
merged with duplicate groups, grouped split, manifest and summary."""

from __future__ import annotations

import csv
import dataclasses
import io
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from modules.data_summary import data_info, data_summary
from modules.demo_data import demo_data_dir
from modules.duplicates import DEFAULT_THRESHOLD, DuplicateGroups, group_duplicates
from modules.groups_file import read_groups_file
from modules.ingest import ImageSet, load_image_set
from modules.must_link import read_must_link
from modules.nifti import SliceChoice
from modules.positive_class import resolve_positive
from modules.sources import display_path
from modules.split import (
    DEFAULT_FRACTIONS,
    SPLITS,
    assign_groups,
    file_groups,
    grouped_folds,
    grouped_split,
)
from modules.subjects import path_index, subject_links, subjects_of

SPLIT_MODES = ("grouped", "random")


@dataclass(frozen=True)
class TrialData:
    """What a training run needs of a data set: decoded arrays, class indices, split names, class names.

    Plain lists and NumPy arrays, so that Ray ships it through the object store (arrays read zero-copy)."""

    images: list  # (H, W) uint8 arrays
    targets: list[int]
    splits: list[str]
    classes: tuple[str, ...]
    positive: int | None = None  # index of the positive class of a two-class set; None for N classes


@dataclass
class PreparedData:
    """A decoded image set with its groups (copies and subjects merged) and its train/val/test assignment."""

    images: ImageSet
    dups: DuplicateGroups
    splits: list[str]
    seed: int
    fractions: tuple[float, float, float]
    synthetic: bool
    positive: int | None = None  # index in images.classes of a two-class set's positive class
    split_mode: str = (
        "grouped"  # "grouped" (duplicate-aware) or "random" (by file, ignoring duplicates: leaky)
    )
    fold: dict | None = None  # for one fold of a cross-validation: {"k": ..., "index": ..., "seed": ...}
    subjects: list[str] = field(default_factory=list)  # each image's subject ("" for none), modules.subjects

    @property
    def positive_class(self) -> str | None:
        return None if self.positive is None else self.images.classes[self.positive]

    @property
    def groups(self) -> list[str]:
        return self.dups.group

    def indices(self, split: str) -> list[int]:
        return [i for i, s in enumerate(self.splits) if s == split]

    @property
    def leaky(self) -> bool:
        return self.split_mode == "random"

    def split_groups(self) -> list[str]:
        """The groups the split keeps together: copies and subjects, or single files for ``--split random``."""
        return file_groups(len(self.groups)) if self.leaky else self.groups

    def trial_data(self, *, exclude_test: bool = False) -> TrialData:
        """The arrays a run needs. ``exclude_test``: leave the test images out altogether (what a search's
        trials get: they cannot touch the images the refit is scored on)."""
        keep = [i for i, s in enumerate(self.splits) if not (exclude_test and s == "test")]
        targets = self.images.targets
        return TrialData(
            images=[self.images.records[i].pixels for i in keep],
            targets=[int(targets[i]) for i in keep],
            splits=[self.splits[i] for i in keep],
            classes=self.images.classes,
            positive=self.positive,
        )

    def without_test(self) -> PreparedData:
        """This data set split into train/val only (grouped, stratified, this seed, in the train:val ratio of
        ``fractions``): for fitting a final model on every image, to be scored on another collection."""
        train_f, val_f = self.fractions[0], self.fractions[1]
        splits = assign_groups(
            self.images.labels,
            self.split_groups(),
            names=("train", "val"),
            fractions=(train_f / (train_f + val_f), val_f / (train_f + val_f)),
            seed=self.seed,
        )
        fractions = (train_f / (train_f + val_f), val_f / (train_f + val_f), 0.0)
        return dataclasses.replace(self, splits=splits, fractions=fractions)

    def cv_folds(self, k: int) -> list[PreparedData]:
        """K copies of this data set, fold ``f`` held out as "test" and the rest split into train/val.

        Folds are stratified and grouped (copies and subjects, or single files for ``--split random``) with this
        data's seed; each fold's train/val split uses seed ``seed + 1 + f`` with the train:val ratio of
        ``fractions``. Every image is in the test split of exactly one fold."""
        groups = self.split_groups()
        labels = self.images.labels
        folds = grouped_folds(labels, groups, k=k, seed=self.seed)
        train_f, val_f = self.fractions[0], self.fractions[1]
        out = []
        for f in range(k):
            rest = [i for i, g in enumerate(folds) if g != f]
            inner = assign_groups(
                [labels[i] for i in rest],
                [groups[i] for i in rest],
                names=("train", "val"),
                fractions=(train_f / (train_f + val_f), val_f / (train_f + val_f)),
                seed=self.seed + 1 + f,
            )
            splits = ["test"] * len(labels)
            for i, s in zip(rest, inner, strict=True):
                splits[i] = s
            empty = [s for s in SPLITS if s not in splits]
            if empty:
                raise ValueError(
                    f"fold {f + 1} of {k}: the {', '.join(empty)} split(s) would be empty; expected enough "
                    f"distinct images per class for {k} folds (use fewer folds)"
                )
            fold = {"k": k, "index": f, "seed": self.seed, "inner_seed": self.seed + 1 + f}
            out.append(dataclasses.replace(self, splits=splits, fold=fold))
        return out

    def subject_of(self, i: int) -> str:
        """Image ``i``'s subject ("" for none)."""
        return self.subjects[i] if self.subjects else ""

    def split_rows(self) -> list[dict[str, str]]:
        """The manifest: one row per image (path, sha256, label, group, subject, split), sorted by path. ``group``
        is what the split keeps together (copies and subjects merged); ``subject`` whom the image belongs to."""
        rows = [
            {
                "path": display_path(r.path),
                "sha256": r.sha256,
                "label": r.label,
                "group": g,
                "subject": self.subject_of(i),
                "split": s,
            }
            for i, (r, g, s) in enumerate(zip(self.images.records, self.groups, self.splits, strict=True))
        ]
        return sorted(rows, key=lambda row: row["path"])

    def split_csv(self) -> str:
        buf = io.StringIO()
        writer = csv.DictWriter(
            buf, fieldnames=["path", "sha256", "label", "group", "subject", "split"], lineterminator="\n"
        )
        writer.writeheader()
        writer.writerows(self.split_rows())
        return buf.getvalue()

    def data_info(self) -> dict:
        """The ``data`` block of every report."""
        return data_info(self)

    def summary(self) -> dict:
        """What ``python -m tuning.data --json`` prints (keys of DESIGN.md plus formats, modes and subjects)."""
        return data_summary(self)


def prepare_data(
    path: str | os.PathLike,
    *,
    seed: int = 0,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    strict: bool = False,
    threshold: float = DEFAULT_THRESHOLD,
    classes: Sequence[str] | None = None,
    positive_class: str | None = None,
    synthetic: bool = False,
    warn: Callable[[str], None] | None = None,
    split: str = "grouped",
    must_link: str | os.PathLike | None = None,
    groups: str | os.PathLike | None = None,
    choice: SliceChoice | None = None,
) -> PreparedData:
    """Ingest, group subjects and duplicates, split. Raises ``DatasetError`` / ``ValueError`` with a clear message.

    ``classes`` None: one class per folder (see ``load_image_set``). ``positive_class``: see
    ``resolve_positive``. ``split``: "grouped" keeps every group (copies, subjects) inside one split; "random"
    splits file by file and lets duplicates straddle train and test (LEAKY: only to measure how much duplicates
    inflate a result). ``must_link``: a CSV of image sets that share a group (``modules.must_link``);
    ``groups``: a CSV of each image's group (``modules.groups_file``); ``choice``: the slices of NIfTI volumes."""
    if split not in SPLIT_MODES:
        raise ValueError(f"unknown split mode {split!r}; expected one of {', '.join(SPLIT_MODES)}")
    images = load_image_set(path, classes=classes, strict=strict, warn=warn, choice=choice)
    positive = resolve_positive(images.classes, positive_class, source=images.source)
    index = path_index(images.records)
    links = read_must_link(must_link, index) if must_link is not None else []
    subjects = subjects_of(images.records, read_groups_file(groups, images, warn=warn) if groups else None)
    dups = group_duplicates(
        [r.sha256 for r in images.records],
        [r.pixels for r in images.records],
        images.labels,
        threshold=threshold,
        links=links,
        together=subject_links(subjects),
    )
    if dups.mixed_label_clusters and warn is not None:
        for c in dups.mixed_label_clusters:
            shown = ", ".join(
                f"{display_path(images.records[i].path)} ({images.records[i].label})" for i in c
            )
            warn(f"duplicate cluster with conflicting labels (kept together in one split): {shown}")
    split_groups = file_groups(len(dups.group)) if split == "random" else dups.group
    splits = grouped_split(images.labels, split_groups, fractions=fractions, seed=seed)
    empty = [s for s in SPLITS if s not in splits]
    if empty:
        raise ValueError(
            f"{path}: too few distinct images ({len(set(dups.group))} groups{_of_subjects(subjects)}) to fill "
            f"the {', '.join(empty)} split(s); expected enough images per class for {fractions}"
        )
    return PreparedData(
        images,
        dups,
        splits,
        seed,
        tuple(fractions),
        synthetic,
        positive=positive,
        split_mode=split,
        subjects=subjects,
    )


def _of_subjects(subjects: list[str]) -> str:
    """A note for the too-few-groups error when subjects (patients, volumes) made the groups few."""
    named = {s for s in subjects if s}
    if not named:
        return ""
    note = f", {len(named)} subject(s): patients, volumes or --groups groups"
    if len(named) == 1 and all(subjects):
        note += (
            "; every image has the same subject (a PatientID blanked to one value?), give the real "
            "groups with --groups FILE.csv"
        )
    return note


def resolve_data(path: str | os.PathLike | None, **kwargs) -> PreparedData:
    """``prepare_data`` on ``path``, or on the built-in phantom set when ``path`` is None."""
    if path is None:
        return prepare_data(demo_data_dir(), synthetic=True, **kwargs)
    return prepare_data(path, **kwargs)
