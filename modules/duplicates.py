"""Group exact and near-duplicate images, so that a group is never split across train/val/test.

Exact copies share a sha256. Near copies (resized, re-encoded, re-cropped, flipped or rotated) are found by
the Pearson correlation of 64x64 grayscale thumbnails, taking the best over the 8 flips/rotations and over two
framings: the whole picture, and the picture cropped to its content (the bright head, without black borders),
which makes a re-cropped copy line up with its original. Pairs at or above ``threshold`` are merged with
union-find. Cost: one (N x 4096) by (4096 x 16N) product in float32, chunked; a few seconds for thousands.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

THUMB = 64
DEFAULT_THRESHOLD = 0.95
MIN_STD = 2.0  # grey levels: flatter thumbnails have no meaningful correlation and are left alone


@dataclass(frozen=True)
class DuplicateGroups:
    """``group[i]`` is the group id of image i (the smallest sha256 prefix in its group: stable everywhere)."""

    group: list[str]
    exact_groups: list[list[int]]  # sets of indices with identical bytes, size >= 2
    clusters: list[list[int]]  # exact and near copies merged, size >= 2
    mixed_label_clusters: list[list[int]]  # clusters whose members carry different labels


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _content_box(pixels: np.ndarray) -> np.ndarray:
    """Crop to the bounding box of clearly non-background pixels (falls back to the whole image)."""
    thresh = max(20.0, 0.15 * float(pixels.max()))
    rows = np.flatnonzero((pixels > thresh).any(axis=1))
    cols = np.flatnonzero((pixels > thresh).any(axis=0))
    if rows.size < 4 or cols.size < 4:
        return pixels
    return pixels[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def _thumb(pixels: np.ndarray) -> np.ndarray:
    img = Image.fromarray(pixels).resize((THUMB, THUMB), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(img, dtype=np.float32)


def _standardise(thumbs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of zero mean and unit norm, so that a dot product is a Pearson correlation."""
    flat = thumbs.reshape(len(thumbs), -1).astype(np.float64)
    flat -= flat.mean(axis=1, keepdims=True)
    std = flat.std(axis=1)
    norm = np.linalg.norm(flat, axis=1, keepdims=True)
    return (flat / np.maximum(norm, 1e-12)).astype(np.float32), std


def _dihedral(thumbs: np.ndarray) -> list[np.ndarray]:
    """The 8 flips/rotations of a stack of square thumbnails, shape (N, T, T) each."""
    out = []
    for k in range(4):
        rot = np.rot90(thumbs, k, axes=(1, 2))
        out += [rot, rot[:, :, ::-1]]
    return out


def near_duplicate_pairs(
    images: Sequence[np.ndarray], *, threshold: float = DEFAULT_THRESHOLD, chunk: int = 512
) -> list[tuple[int, int, float]]:
    """Pairs (i, j, r) with i < j whose best thumbnail correlation r is >= threshold."""
    n = len(images)
    if n < 2:
        return []
    framings = [
        np.stack([_thumb(p) for p in images]),
        np.stack([_thumb(_content_box(p)) for p in images]),
    ]
    pairs: dict[tuple[int, int], float] = {}
    for thumbs in framings:
        query, std = _standardise(thumbs)
        usable = std >= MIN_STD
        keys = np.concatenate([_standardise(v)[0] for v in _dihedral(thumbs)])  # (8N, T*T)
        for start in range(0, n, chunk):
            block = query[start : start + chunk] @ keys.T  # (chunk, 8N)
            best = block.reshape(len(block), 8, n).max(axis=1)
            for a, b in zip(*np.nonzero(best >= threshold), strict=True):
                i, j = start + int(a), int(b)
                if i < j and usable[i] and usable[j]:
                    pairs[(i, j)] = max(pairs.get((i, j), -1.0), float(best[a, b]))
    return sorted((i, j, r) for (i, j), r in pairs.items())


def group_duplicates(
    hashes: Sequence[str],
    images: Sequence[np.ndarray],
    labels: Sequence[str],
    *,
    threshold: float = DEFAULT_THRESHOLD,
    links: Sequence[Sequence[int]] = (),
    together: Sequence[Sequence[int]] = (),
) -> DuplicateGroups:
    """Group images that are byte copies or near copies of each other (see the module docstring).
    ``links``: sets of image indices that must share a group too (a user's must-link list: copies below the
    threshold, slices of one patient); they count as clusters. ``together``: sets that share a group without
    being copies (the images of one subject, ``modules.subjects``): they join the groups, not the clusters."""
    n = len(hashes)
    if not (len(images) == len(labels) == n):
        raise ValueError(f"hashes, images and labels differ in length: {n}, {len(images)}, {len(labels)}")
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    uf = _UnionFind(n)
    first: dict[str, int] = {}
    for i, h in enumerate(hashes):
        if h in first:
            uf.union(first[h], i)
        else:
            first[h] = i
    by_hash: dict[str, list[int]] = {}
    for i, h in enumerate(hashes):
        by_hash.setdefault(h, []).append(i)
    exact = sorted(v for v in by_hash.values() if len(v) > 1)

    for i, j, _ in near_duplicate_pairs(images, threshold=threshold):
        uf.union(i, j)
    for linked in links:
        for j in linked[1:]:
            uf.union(linked[0], j)
    clusters = sorted(v for v in _members(uf, n).values() if len(v) > 1)
    mixed = [c for c in clusters if len({labels[i] for i in c}) > 1]
    for linked in together:
        for j in linked[1:]:
            uf.union(linked[0], j)
    group = [""] * n
    for idx in _members(uf, n).values():
        gid = "g" + min(hashes[i] for i in idx)[:12]
        for i in idx:
            group[i] = gid
    return DuplicateGroups(group=group, exact_groups=exact, clusters=clusters, mixed_label_clusters=mixed)


def _members(uf: _UnionFind, n: int) -> dict[int, list[int]]:
    members: dict[int, list[int]] = {}
    for i in range(n):
        members.setdefault(uf.find(i), []).append(i)
    return members
