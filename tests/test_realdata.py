"""Checks on the real Kaggle set (253 images); skipped when it is absent (set MRI_DATA to point at it)."""

import re

import pytest

from modules.dataset import prepare_data

pytestmark = pytest.mark.realdata

# Pairs outside SOURCE.md's lists that our framing (content crop) merges, each checked by eye to be the same
# picture re-cropped or annotated (an arrow added in Y30, a frame in Y112, a tighter crop in Y107).
SAME_PICTURE_CHECKED_BY_EYE = [
    ("yes/Y112.JPG", "yes/Y146.JPG"),
    ("yes/Y155.JPG", "yes/Y55.jpg"),
    ("yes/Y255.JPG", "yes/Y30.jpg"),
    ("yes/Y107.jpg", "yes/Y163.JPG"),
]


def reference_clusters(source_md: str) -> tuple[list[set[str]], list[tuple[str, str]]]:
    near = source_md.split("**Near-duplicates**")[1]
    listed, eyeballed = (
        near.split("Below the threshold")[0],
        near.split("Below the threshold")[1].split("\n- ")[0],
    )
    clusters = [set(re.findall(r"`([^`]+)`", line)) for line in listed.splitlines() if line.startswith("- `")]
    pairs = re.findall(r"`([^`]+)`~`([^`]+)`", eyeballed)
    return clusters, pairs


def test_real_set_counts_duplicates_and_leak_free_split(real_data):
    data = prepare_data(real_data, seed=0)
    s = data.summary()
    assert s["files"] == 253 and s["classes"] == {"no": 98, "yes": 155}
    assert s["exact_duplicate_groups"] == 22 and s["exact_duplicate_files"] == 47
    assert s["groups_across_splits"] == 0
    assert s["mixed_label_clusters"] == []

    clusters, eyeballed = reference_clusters((real_data / "SOURCE.md").read_text())
    assert len(clusters) == 33
    ours = [set(c) for c in s["clusters"]]
    recovered = sum(any(ref <= mine for mine in ours) for ref in clusters)
    assert recovered >= 30, f"recovered {recovered} of 33 reference clusters"

    # no merge of different pictures: each of our clusters lies inside one "known same picture" component
    known: dict[str, set[str]] = {}
    for group in [*clusters, *map(set, eyeballed), *map(set, SAME_PICTURE_CHECKED_BY_EYE)]:
        merged = set(group).union(*(known.get(p, set()) for p in group))
        for p in merged:
            known[p] = merged
    for mine in ours:
        first = next(iter(mine))
        assert mine <= known.get(first, {first}), (
            f"cluster merges pictures not known to be the same: {sorted(mine)}"
        )


def test_real_set_split_is_reproducible(real_data):
    a = prepare_data(real_data, seed=5).split_csv()
    b = prepare_data(real_data, seed=5).split_csv()
    assert a == b
