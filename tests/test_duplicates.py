import numpy as np
from PIL import Image

from modules.duplicates import group_duplicates, near_duplicate_pairs
from tests.helpers import scan


def resized(p: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(p).resize(size, Image.Resampling.BICUBIC))


def test_near_copies_survive_resize_flip_rotation_crop_and_noise():
    base = scan(1, 96)
    rng = np.random.default_rng(0)
    padded = np.pad(base, 30)  # the same scan with wide black borders (a re-crop in the other direction)
    noisy = np.clip(base + rng.normal(0, 4, base.shape), 0, 255).astype(np.uint8)
    variants = [resized(base, (150, 150)), base[:, ::-1].copy(), np.rot90(base).copy(), padded, noisy]
    others = [scan(s, 96) for s in range(2, 8)]
    images = [base, *variants, *others]
    pairs = {(i, j) for i, j, _ in near_duplicate_pairs(images)}
    for k in range(1, len(variants) + 1):
        assert (0, k) in pairs, f"variant {k} not matched"
    n = len(images)
    assert not any(j >= 1 + len(variants) and i != j for i, j in pairs if i >= 1 + len(variants)), pairs
    assert all(j < 1 + len(variants) for i, j in pairs if i == 0)
    assert n == 12


def test_groups_exact_and_near_and_ids_are_stable():
    a, b, c = scan(10), scan(11), scan(12)
    images = [a, a.copy(), resized(b, (64, 64)), b, c]
    hashes = ["h1", "h1", "h3", "h4", "h5"]
    labels = ["yes", "yes", "no", "no", "no"]
    g = group_duplicates(hashes, images, labels)
    assert g.group[0] == g.group[1] and g.group[2] == g.group[3]
    assert len({g.group[0], g.group[2], g.group[4]}) == 3
    assert g.exact_groups == [[0, 1]]
    assert g.clusters == [[0, 1], [2, 3]]
    assert g.group[2] == "gh3"  # smallest hash in the group: independent of file order
    assert g.mixed_label_clusters == []
    g2 = group_duplicates(hashes[::-1], images[::-1], labels[::-1])
    assert g2.group[::-1] == g.group


def test_mixed_label_clusters_are_reported():
    a = scan(3)
    g = group_duplicates(["x", "x"], [a, a], ["yes", "no"])
    assert g.mixed_label_clusters == [[0, 1]]


def test_flat_images_are_not_merged():
    flat = [np.full((40, 40), v, np.uint8) for v in (0, 10, 200)]
    assert near_duplicate_pairs(flat) == []
