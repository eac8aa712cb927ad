"""What a prepared data set reports: the ``data`` block of every report, and the summary ``tuning.data`` prints.

``files`` counts images (what trains and scores), as it always has for sets of pictures; ``source_files``
counts the files they were read from, which differ once a volume gives many slices or a DICOM many frames.
"""

from __future__ import annotations

from collections import Counter

from modules.sources import display_path
from modules.split import groups_across_splits, majority_baselines, split_counts
from modules.subjects import subject_summary


def _subjects(data) -> dict:
    subjects = data.subjects or [""] * len(data.images.records)
    return subject_summary(subjects, data.splits, data.groups)


def data_info(data) -> dict:
    """The ``data`` block of every report, of a ``modules.dataset.PreparedData``."""
    images = data.images
    return {
        "source": images.source,
        "fingerprint": images.fingerprint,
        "synthetic": data.synthetic,
        "files": len(images.records),
        "source_files": len({r.source_file for r in images.records}),
        "classes": images.class_counts(),
        "positive_class": data.positive_class,
        "skipped": len(images.skipped),
        "slices": {"axis": images.choice.axis, "slices": images.choice.slices},
        "subjects": _subjects(data),
        "split_seed": data.seed,
        "split_fractions": list(data.fractions),
        "split_mode": data.split_mode,
        "leaky": data.leaky,
        "groups_across_splits": groups_across_splits(data.groups, data.splits),
        **({"fold": data.fold} if data.fold else {}),
    }


def data_summary(data) -> dict:
    """What ``python -m tuning.data --json`` prints of a ``modules.dataset.PreparedData`` (keys of DESIGN.md
    plus formats, modes, grey levels and subjects)."""
    images, dups = data.images, data.dups
    recs, classes, labels = images.records, images.classes, images.labels
    return {
        "source": images.source,
        "synthetic": data.synthetic,
        "fingerprint": images.fingerprint,
        "files": len(recs),
        "source_files": len({r.source_file for r in recs}),
        "classes": images.class_counts(),
        "positive_class": data.positive_class,
        "formats": dict(sorted(Counter(r.format for r in recs).items())),
        "modes": dict(sorted(Counter(r.mode for r in recs).items())),
        "intensity": dict(sorted(Counter(r.intensity for r in recs).items())),
        "slices": {"axis": images.choice.axis, "slices": images.choice.slices},
        "blank_images_left_out": images.blank,
        "skipped": [{"path": display_path(s.path), "reason": s.reason} for s in images.skipped],
        "ignored_outside_class_folders": [display_path(p) for p in images.ignored],
        "exact_duplicate_groups": len(dups.exact_groups),
        "exact_duplicate_files": sum(len(g) for g in dups.exact_groups),
        "duplicate_clusters": len(dups.clusters),
        "duplicate_cluster_files": sum(len(c) for c in dups.clusters),
        "clusters": [sorted(display_path(recs[i].path) for i in c) for c in dups.clusters],
        "mixed_label_clusters": [
            sorted(display_path(recs[i].path) for i in c) for c in dups.mixed_label_clusters
        ],
        "subjects": _subjects(data),
        "groups": len(set(data.groups)),
        "groups_across_splits": groups_across_splits(data.groups, data.splits),
        "split_seed": data.seed,
        "split_fractions": list(data.fractions),
        "split_mode": data.split_mode,
        "split": split_counts(labels, data.splits, classes),
        "majority_baseline": majority_baselines(labels, data.splits, classes),
    }
