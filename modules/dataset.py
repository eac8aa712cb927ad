"""From a path to a leak-free, audited split: ingest, duplicate groups, grouped split, manifest and summary."""

from __future__ import annotations

import csv
import io
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from modules.duplicates import DEFAULT_THRESHOLD, DuplicateGroups, group_duplicates
from modules.ingest import DatasetError, ImageSet, display_path, load_image_set
from modules.split import (
    DEFAULT_FRACTIONS,
    SPLITS,
    grouped_split,
    groups_across_splits,
    majority_baselines,
    split_counts,
)

DEMO_PHANTOM = {"n_per_class": 60, "size": 128, "seed": 0}
DEFAULT_POSITIVE = "yes"  # the tumour class of the brain-MRI set: the positive class of a two-class set


def resolve_positive(classes: Sequence[str], positive: str | None, *, source: str = "the data") -> int | None:
    """Index in ``classes`` of the class that sensitivity, specificity and the ROC refer to.

    Two classes: ``positive`` (matched ignoring case), else ``"yes"`` when it is one of them; otherwise a
    ``DatasetError`` asks for ``--positive-class``. More classes: None (they are scored one-vs-rest, per class
    and macro-averaged), and naming a positive class is an error."""
    names = [c.lower() for c in classes]
    shown = ", ".join(classes)
    if len(classes) != 2:
        if positive is not None:
            raise DatasetError(
                f"{source}: --positive-class {positive!r} given, but the set has {len(classes)} classes "
                f"({shown}); expected it only for a two-class set (N classes are scored one-vs-rest)"
            )
        return None
    if positive is None:
        if DEFAULT_POSITIVE in names:
            return names.index(DEFAULT_POSITIVE)
        raise DatasetError(
            f"{source}: two classes ({shown}) and no '{DEFAULT_POSITIVE}' among them; expected "
            f"--positive-class naming the one that sensitivity and the ROC refer to (one of {shown})"
        )
    if positive.lower() not in names:
        raise DatasetError(
            f"{source}: --positive-class {positive!r} is not a class of this set; expected one of {shown}"
        )
    return names.index(positive.lower())


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
    """A decoded image set with its duplicate groups and its train/val/test assignment."""

    images: ImageSet
    dups: DuplicateGroups
    splits: list[str]
    seed: int
    fractions: tuple[float, float, float]
    synthetic: bool
    positive: int | None = (
        None  # index in images.classes of a two-class set's positive class (see resolve_positive)
    )

    @property
    def positive_class(self) -> str | None:
        return None if self.positive is None else self.images.classes[self.positive]

    @property
    def groups(self) -> list[str]:
        return self.dups.group

    def indices(self, split: str) -> list[int]:
        return [i for i, s in enumerate(self.splits) if s == split]

    def trial_data(self) -> TrialData:
        return TrialData(
            images=[r.pixels for r in self.images.records],
            targets=self.images.targets.tolist(),
            splits=list(self.splits),
            classes=self.images.classes,
            positive=self.positive,
        )

    def split_rows(self) -> list[dict[str, str]]:
        """The manifest: one row per image (path, sha256, label, group, split), sorted by path."""
        rows = [
            {"path": display_path(r.path), "sha256": r.sha256, "label": r.label, "group": g, "split": s}
            for r, g, s in zip(self.images.records, self.groups, self.splits, strict=True)
        ]
        return sorted(rows, key=lambda row: row["path"])

    def split_csv(self) -> str:
        buf = io.StringIO()
        writer = csv.DictWriter(
            buf, fieldnames=["path", "sha256", "label", "group", "split"], lineterminator="\n"
        )
        writer.writeheader()
        writer.writerows(self.split_rows())
        return buf.getvalue()

    def data_info(self) -> dict:
        """The ``data`` block of every report."""
        return {
            "source": self.images.source,
            "fingerprint": self.images.fingerprint,
            "synthetic": self.synthetic,
            "files": len(self.images.records),
            "classes": self.images.class_counts(),
            "positive_class": self.positive_class,
            "skipped": len(self.images.skipped),
            "split_seed": self.seed,
            "split_fractions": list(self.fractions),
        }

    def summary(self) -> dict:
        """What ``python -m tuning.data --json`` prints (keys of DESIGN.md plus formats and modes)."""
        recs = self.images.records
        classes = self.images.classes
        labels = self.images.labels
        return {
            "source": self.images.source,
            "synthetic": self.synthetic,
            "fingerprint": self.images.fingerprint,
            "files": len(recs),
            "classes": self.images.class_counts(),
            "positive_class": self.positive_class,
            "formats": dict(sorted(Counter(r.format for r in recs).items())),
            "modes": dict(sorted(Counter(r.mode for r in recs).items())),
            "skipped": [{"path": display_path(s.path), "reason": s.reason} for s in self.images.skipped],
            "ignored_outside_class_folders": [display_path(p) for p in self.images.ignored],
            "exact_duplicate_groups": len(self.dups.exact_groups),
            "exact_duplicate_files": sum(len(g) for g in self.dups.exact_groups),
            "duplicate_clusters": len(self.dups.clusters),
            "duplicate_cluster_files": sum(len(c) for c in self.dups.clusters),
            "clusters": [sorted(display_path(recs[i].path) for i in c) for c in self.dups.clusters],
            "mixed_label_clusters": [
                sorted(display_path(recs[i].path) for i in c) for c in self.dups.mixed_label_clusters
            ],
            "groups": len(set(self.groups)),
            "groups_across_splits": groups_across_splits(self.groups, self.splits),
            "split_seed": self.seed,
            "split_fractions": list(self.fractions),
            "split": split_counts(labels, self.splits, classes),
            "majority_baseline": majority_baselines(labels, self.splits, classes),
        }


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
) -> PreparedData:
    """Ingest, group duplicates, split. Raises ``DatasetError`` / ``ValueError`` with a clear message.

    ``classes`` None: one class per folder (see ``load_image_set``). ``positive_class``: see
    ``resolve_positive``."""
    images = load_image_set(path, classes=classes, strict=strict, warn=warn)
    positive = resolve_positive(images.classes, positive_class, source=images.source)
    dups = group_duplicates(
        [r.sha256 for r in images.records],
        [r.pixels for r in images.records],
        images.labels,
        threshold=threshold,
    )
    if dups.mixed_label_clusters and warn is not None:
        for c in dups.mixed_label_clusters:
            shown = ", ".join(
                f"{display_path(images.records[i].path)} ({images.records[i].label})" for i in c
            )
            warn(f"duplicate cluster with conflicting labels (kept together in one split): {shown}")
    splits = grouped_split(images.labels, dups.group, fractions=fractions, seed=seed)
    empty = [s for s in SPLITS if s not in splits]
    if empty:
        raise ValueError(
            f"{path}: too few distinct images ({len(set(dups.group))} groups) to fill the {', '.join(empty)} "
            f"split(s); expected enough images per class for {fractions}"
        )
    return PreparedData(images, dups, splits, seed, tuple(fractions), synthetic, positive)


def demo_data_dir(cache: str | os.PathLike | None = None) -> Path:
    """The built-in phantom set, generated once (deterministically) into a cache folder, atomically."""
    from modules.phantom import VERSION, make_phantom

    base = Path(cache or os.environ.get("MRI_TUNE_CACHE") or Path("results") / ".cache")
    p = DEMO_PHANTOM
    target = (
        base / f"phantom-v{VERSION}-n{p['n_per_class']}-s{p['size']}-seed{p['seed']}"
    )  # new generator: new set
    if target.is_dir():
        return target
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".phantom-", dir=base))
    try:
        make_phantom(tmp, n_per_class=p["n_per_class"], size=p["size"], seed=p["seed"])
        os.replace(tmp, target)
    except OSError:
        if not target.is_dir():  # another process may have won the race; anything else is an error
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_data(path: str | os.PathLike | None, **kwargs) -> PreparedData:
    """``prepare_data`` on ``path``, or on the built-in phantom set when ``path`` is None."""
    if path is None:
        return prepare_data(demo_data_dir(), synthetic=True, **kwargs)
    return prepare_data(path, **kwargs)
