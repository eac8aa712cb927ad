import random

import pytest

from modules.split import grouped_split, groups_across_splits, majority_baselines, split_counts


def synthetic(n_groups: int = 60, seed: int = 0):
    rnd = random.Random(seed)
    labels, groups = [], []
    for g in range(n_groups):
        label = "yes" if g % 5 < 3 else "no"
        for _ in range(rnd.choice([1, 1, 1, 2, 3])):
            labels.append(label)
            groups.append(f"g{g:03d}")
    return labels, groups


def test_groups_never_cross_splits_and_classes_are_stratified():
    labels, groups = synthetic()
    splits = grouped_split(labels, groups, seed=3)
    assert groups_across_splits(groups, splits) == 0
    counts = split_counts(labels, splits, ["no", "yes"])
    for c in ("no", "yes"):
        total = sum(counts[s][c] for s in counts)
        assert counts["train"][c] / total == pytest.approx(0.70, abs=0.08)
        assert counts["val"][c] > 0 and counts["test"][c] > 0


def test_same_seed_same_split_regardless_of_order():
    labels, groups = synthetic()
    a = grouped_split(labels, groups, seed=7)
    order = list(range(len(labels)))
    random.Random(1).shuffle(order)
    b = grouped_split([labels[i] for i in order], [groups[i] for i in order], seed=7)
    assert [a[i] for i in order] == b
    assert grouped_split(labels, groups, seed=8) != a


def test_fractions_validated():
    with pytest.raises(ValueError, match="summing to 1"):
        grouped_split(["a"], ["g"], fractions=(0.8, 0.15, 0.15))
    with pytest.raises(ValueError, match="positive"):
        grouped_split(["a"], ["g"], fractions=(1.0, 0.0, 0.0))


def test_majority_baseline_uses_the_training_majority():
    labels = ["yes"] * 6 + ["no"] * 4 + ["no", "yes", "no"]
    splits = ["train"] * 10 + ["test"] * 3
    base = majority_baselines(labels, splits, ["no", "yes"])
    assert base["train"]["class"] == "yes" and base["train"]["accuracy"] == 0.6
    assert base["test"]["accuracy"] == pytest.approx(1 / 3)
