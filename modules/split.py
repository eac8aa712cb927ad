"""Stratified, grouped, seeded train/val/test split: a group (copies of one scan, the images of one patient or
volume) never straddles two splits.

The result depends only on (labels, groups, fractions, seed), never on file order, paths or the machine:
groups are visited in an order fixed by their ids and a seeded permutation (NumPy's PCG64).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.70, 0.15, 0.15)


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    if len(fractions) != 3 or any(f <= 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(
            f"split fractions must be three positive numbers summing to 1, got {tuple(fractions)}"
        )
    return tuple(float(f) for f in fractions)  # type: ignore[return-value]


def grouped_split(
    labels: Sequence[str],
    groups: Sequence[str],
    *,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
) -> list[str]:
    """Assign each image to "train", "val" or "test".

    Per class (a group counts for the majority label of its members), groups are shuffled with the seed and
    visited largest first; each goes to the split furthest below its target share of that class's images.
    """
    return assign_groups(labels, groups, names=SPLITS, fractions=check_fractions(fractions), seed=seed)


def assign_groups(
    labels: Sequence[str],
    groups: Sequence[str],
    *,
    names: Sequence[str],
    fractions: Sequence[float],
    seed: int = 0,
) -> list[str]:
    """The stratified, grouped assignment behind every split here: each image gets one of ``names``, whole
    groups at a time, each name receiving about its fraction of every class."""
    if len(labels) != len(groups):
        raise ValueError(f"labels and groups differ in length: {len(labels)} and {len(groups)}")
    if len(names) != len(fractions) or len(names) < 2:
        raise ValueError(f"need one fraction per name and two names or more, got {names} and {fractions}")
    members: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    group_label = {
        g: sorted(Counter(labels[i] for i in idx).items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
        for g, idx in members.items()
    }
    rng = np.random.default_rng(seed)
    assignment = [""] * len(labels)
    slots = range(len(names))
    for label in sorted(set(group_label.values())):
        mine = sorted(g for g, lab in group_label.items() if lab == label)
        mine = [mine[k] for k in rng.permutation(len(mine))]
        mine.sort(key=lambda g: -len(members[g]))  # stable: the shuffle decides among equal sizes
        total = sum(len(members[g]) for g in mine)
        targets = [f * total for f in fractions]
        filled = [0.0] * len(names)
        for g in mine:
            k = max(slots, key=lambda s: (targets[s] - filled[s], -s))
            filled[k] += len(members[g])
            for i in members[g]:
                assignment[i] = names[k]
    return assignment


def grouped_folds(labels: Sequence[str], groups: Sequence[str], *, k: int, seed: int = 0) -> list[int]:
    """Stratified, grouped K-fold: the fold (0..k-1) of each image; a group stays in one fold."""
    if k < 2:
        raise ValueError(f"cross-validation needs k >= 2 folds, got {k}")
    distinct = len(set(groups))
    if distinct < k:
        raise ValueError(
            f"{k} folds need at least {k} distinct images (groups of copies and patients), found {distinct}"
        )
    names = [str(f) for f in range(k)]
    return [int(f) for f in assign_groups(labels, groups, names=names, fractions=[1 / k] * k, seed=seed)]


def file_groups(n: int) -> list[str]:
    """One group per file: splitting on these ignores duplicates (the leaky ``--split random`` contrast)."""
    return [f"file{i}" for i in range(n)]


def groups_across_splits(groups: Sequence[str], splits: Sequence[str]) -> int:
    """The number of groups whose members sit in more than one split (0 for a duplicate-aware grouped split)."""
    seen: dict[str, set[str]] = {}
    for g, s in zip(groups, splits, strict=True):
        seen.setdefault(g, set()).add(s)
    return sum(len(v) > 1 for v in seen.values())


def split_counts(
    labels: Sequence[str], splits: Sequence[str], classes: Sequence[str]
) -> dict[str, dict[str, int]]:
    counts = Counter(zip(splits, labels, strict=True))
    return {s: {c: counts.get((s, c), 0) for c in classes} for s in SPLITS}


def majority_baselines(
    labels: Sequence[str], splits: Sequence[str], classes: Sequence[str]
) -> dict[str, dict[str, float | str]]:
    """Accuracy of always predicting the training split's most frequent class, on each split."""
    counts = split_counts(labels, splits, classes)
    majority = max(classes, key=lambda c: (counts["train"][c], -list(classes).index(c)))
    out: dict[str, dict[str, float | str]] = {}
    for s in SPLITS:
        n = sum(counts[s].values())
        out[s] = {"class": majority, "accuracy": counts[s][majority] / n if n else float("nan"), "n": n}
    return out
