"""Which images of a set are copies of the images of another (e.g. of a model's training data): a copy of a
training image is no test, so ``tuning.evaluate --exclude-duplicates-of`` leaves them out."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from modules.duplicates import DEFAULT_THRESHOLD, group_duplicates
from modules.ingest import ImageSet, load_image_set
from modules.sources import display_path


def copies_of(images: ImageSet, reference: ImageSet, *, threshold: float = DEFAULT_THRESHOLD) -> list[dict]:
    """The images of ``images`` that are exact or near copies of some image of ``reference``.

    Duplicate groups are built over the union of both sets (``modules.duplicates.group_duplicates``); an image
    is a copy when its group holds any image of ``reference``. Returns one dict per copy, in ``images`` order:
    ``index``, ``path``, ``label``, ``kind`` ("exact" when its bytes equal a reference file's, else "near")
    and ``copy_of`` (the reference paths in its group).
    """
    recs, refs = images.records, reference.records
    dups = group_duplicates(
        [r.sha256 for r in recs] + [r.sha256 for r in refs],
        [r.pixels for r in recs] + [r.pixels for r in refs],
        [r.label for r in recs] + [r.label for r in refs],
        threshold=threshold,
    )
    ref_paths: dict[str, list[str]] = {}
    for r, g in zip(refs, dups.group[len(recs) :], strict=True):
        ref_paths.setdefault(g, []).append(display_path(r.path))
    ref_hashes = {r.sha256 for r in refs}
    out = []
    for i, (r, g) in enumerate(zip(recs, dups.group[: len(recs)], strict=True)):
        if g in ref_paths:
            kind = "exact" if r.sha256 in ref_hashes else "near"
            out.append(
                {
                    "index": i,
                    "path": display_path(r.path),
                    "label": r.label,
                    "kind": kind,
                    "copy_of": ref_paths[g],
                }
            )
    return out


def exclude_copies(
    images: ImageSet,
    reference_path: str | Path,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    warn: Callable[[str], None] | None = None,
) -> tuple[list[int], dict]:
    """Indices of the images of ``images`` to keep (those that are no copy of an image of the set at
    ``reference_path``) and the ``exclusion`` block of the report. Raises ``ValueError`` when none is left."""
    reference = load_image_set(
        reference_path,
        classes=images.classes,
        warn=None if warn is None else (lambda m: warn(f"reference set: {m}")),
        choice=images.choice,
    )
    copies = copies_of(images, reference, threshold=threshold)
    dropped = {c["index"] for c in copies}
    keep = [i for i in range(len(images.records)) if i not in dropped]
    if not keep:
        raise ValueError(
            f"{images.source}: all {len(images.records)} images are copies of images of {reference_path}; "
            "nothing is left to evaluate"
        )
    return keep, {
        "reference": str(reference_path),
        "reference_fingerprint": reference.fingerprint,
        "reference_files": len(reference.records),
        "near_threshold": threshold,
        "excluded": len(copies),
        "exact": sum(c["kind"] == "exact" for c in copies),
        "near": sum(c["kind"] == "near" for c in copies),
        "files": [{k: v for k, v in c.items() if k != "index"} for c in copies],
    }
