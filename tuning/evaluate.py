"""``python -m tuning.evaluate --checkpoint CKPT --data PATH``: score a saved model on another labelled set.

The set (a folder with the checkpoint's class folders, e.g. yes/ and no/, or a .zip of one) is ingested with the
same validation as training; a two-class model is scored on its checkpoint's positive class, a model of more
classes one-vs-rest (macro and per-class recall, precision, ROC AUC). ``--exclude-duplicates-of REF`` first drops the images that are exact or near
copies of an image of REF (e.g. the training data), since a copy of a training image is no test. Writes into
``--out``: ``report.json`` (kind "evaluate", the shape of tuning.train's), ``predictions.csv`` (one row per
scored image, with the probability of every class), ``confusion_matrix.png`` and ``roc.png``, and prints a
short summary.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import shlex
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

from modules.checkpoint import (
    decide_labels,
    eval_transform,
    load_classifier,
    positive_index,
    predict_probabilities,
)
from modules.duplicates import DEFAULT_THRESHOLD, group_duplicates
from modules.ingest import ImageSet, load_image_set
from modules.sources import display_path
from tuning.cli import output_folder, run_main, set_threads, warn
from tuning.files import atomic_write_json, atomic_write_text
from tuning.report import (
    classification_metrics,
    plot_confusion,
    plot_roc,
    plot_roc_ovr,
    summary_lines,
    versions,
)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def model_info(meta: dict) -> dict:
    """The ``model`` block of evaluate/predict reports: which checkpoint, what it is, what it was trained on."""
    return {
        "checkpoint": meta["path"],
        "sha256": file_sha256(meta["path"]),
        "model": meta["model"],
        "classes": list(meta["classes"]),
        "positive_class": meta["positive_class"],
        "best_epoch": meta.get("best_epoch"),
        "weights_source": meta.get("weights_source"),
        "trained_on": meta.get("data"),
        "versions": meta.get("versions"),
    }


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


def _predictions_csv(
    paths: list[str], labels: list[str], probs_all: np.ndarray, pred: list[str], classes: list[str], pos
) -> str:
    """One row per image: path, true label, the positive class's probability (``probability``, two classes
    only, empty otherwise), the predicted class and ``prob_<class>`` for every class."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "label", "probability", "predicted", *[f"prob_{c}" for c in classes]])
    for path, label, row, predicted in zip(paths, labels, probs_all, pred, strict=True):
        positive = "" if pos is None else f"{row[pos]:.6f}"
        writer.writerow([path, label, positive, predicted, *[f"{p:.6f}" for p in row]])
    return buf.getvalue()


def run_evaluation(
    checkpoint: str | Path,
    data: str | Path,
    out_dir: str | Path,
    *,
    strict: bool = False,
    exclude_duplicates_of: str | Path | None = None,
    near_threshold: float = DEFAULT_THRESHOLD,
    threshold: float = 0.5,
    batch_size: int = 32,
    command: str = "",
    warn: Callable[[str], None] | None = None,
) -> dict:
    """Score ``checkpoint`` on the labelled set ``data``, write the report folder; returns the report."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be a probability in [0, 1], got {threshold}")
    network, meta = load_classifier(checkpoint)
    classes, positive = list(meta["classes"]), meta["positive_class"]
    images = load_image_set(data, classes=classes, strict=strict, warn=warn)
    notes = []
    if images.fingerprint == (meta.get("data") or {}).get("fingerprint"):
        notes.append(
            "this is the data set the model was trained on (all of its splits, training images included): "
            "these scores are optimistic, not a test result"
        )
    keep, exclusion = list(range(len(images.records))), None
    if exclude_duplicates_of is not None:
        keep, exclusion = exclude_copies(images, exclude_duplicates_of, threshold=near_threshold, warn=warn)
    recs = [images.records[i] for i in keep]
    probs_all = predict_probabilities(
        network, [r.pixels for r in recs], eval_transform(meta), batch_size=batch_size
    )
    pos = positive_index(meta)
    y = np.array([classes.index(r.label) for r in recs], dtype=np.int64)
    counts = Counter(r.label for r in recs)
    majority = max(classes, key=lambda c: (counts[c], c == positive, -classes.index(c)))
    test = classification_metrics(
        probs_all,
        y,
        classes,
        positive=pos,
        majority_baseline=counts[majority] / len(recs),
        threshold=threshold,
    )
    test["majority_baseline_class"] = majority
    test["majority_baseline_of"] = (
        f"the evaluated set: the share of its majority class '{majority}' (always predicting '{majority}')"
    )
    pred = decide_labels(probs_all, meta, threshold=threshold)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        out / "predictions.csv",
        _predictions_csv(
            [display_path(r.path) for r in recs], [r.label for r in recs], probs_all, pred, classes, pos
        ),
    )
    plots = [
        plot_confusion(
            test["confusion_matrix"],
            test["confusion_labels"],
            out / "confusion_matrix.png",
            title="confusion matrix",
        ),
        plot_roc(probs_all[:, pos], y == pos, out / "roc.png", title="ROC (evaluated set)")
        if pos is not None
        else plot_roc_ovr(probs_all, y, classes, out / "roc.png", title="one-vs-rest ROC (evaluated set)"),
    ]
    report = {
        "kind": "evaluate",
        "command": command,
        "data": {
            "source": images.source,
            "fingerprint": images.fingerprint,
            "synthetic": bool(notes and (meta.get("data") or {}).get("synthetic")),
            "files": len(images.records),
            "classes": images.class_counts(),
            "skipped": len(images.skipped),
            "skipped_files": [{"path": display_path(s.path), "reason": s.reason} for s in images.skipped],
            "excluded": 0 if exclusion is None else exclusion["excluded"],
            "evaluated": len(recs),
            "evaluated_classes": {c: counts.get(c, 0) for c in classes},
        },
        "model": model_info(meta),
        "config": meta.get("config"),
        "metrics": {"test": test},
        "exclusion": exclusion,
        "notes": notes,
        "versions": versions(),
        "artifacts": {
            "checkpoint": str(checkpoint),
            "predictions": "predictions.csv",
            "plots": [p.name for p in plots if p is not None],
        },
    }
    atomic_write_json(out / "report.json", report)
    return report


# ----------------------------------------------------------------------------- command line
def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tuning.evaluate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, help="model.pt written by tuning.train or tuning.search")
    d = p.add_argument_group("data")
    d.add_argument(
        "--data",
        required=True,
        help="labelled set to score: a folder with the model's class folders (e.g. yes/ and no/), or a .zip",
    )
    d.add_argument("--strict", action="store_true", help="refuse bad image files instead of skipping them")
    d.add_argument(
        "--exclude-duplicates-of",
        metavar="PATH",
        default=None,
        help="drop images that are exact or near copies of an image of this set, e.g. the training data "
        "(default: keep all)",
    )
    d.add_argument(
        "--near-threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        help=f"thumbnail correlation at which two images count as near copies (default: {DEFAULT_THRESHOLD})",
    )
    m = p.add_argument_group("scoring")
    m.add_argument(
        "--threshold",
        type=float,
        default=0.5,
        help="two-class models: probability of the positive class from which it is predicted (default: 0.5); "
        "models of more classes predict the most probable class",
    )
    m.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default: 32)")
    m.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: 0, torch's default)")
    o = p.add_argument_group("output")
    o.add_argument("--out", default=None, help="folder to write (default: results/evaluate-<timestamp>/)")
    o.add_argument("--overwrite", action="store_true", help="allow replacing an existing report.json")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    out = output_folder(args.out, "evaluate", marker="report.json", overwrite=args.overwrite)
    set_threads(args.threads)
    command = "python -m tuning.evaluate " + shlex.join(argv if argv is not None else sys.argv[1:])
    report = run_evaluation(
        args.checkpoint,
        args.data,
        out,
        strict=args.strict,
        exclude_duplicates_of=args.exclude_duplicates_of,
        near_threshold=args.near_threshold,
        threshold=args.threshold,
        batch_size=args.batch_size,
        command=command,
        warn=warn,
    )
    print_summary(report, out)
    return 0


def print_summary(report: dict, out: Path) -> None:
    d, m, model = report["data"], report["metrics"]["test"], report["model"]
    trained = (model["trained_on"] or {}).get("source", "unknown data")
    print(f"\nmodel: {model['model']} from {model['checkpoint']} (trained on {trained})")
    counts = ", ".join(f"{c}: {n}" for c, n in d["evaluated_classes"].items())
    print(f"data: {d['source']}: {d['evaluated']} images scored ({counts}); {d['skipped']} skipped", end="")
    exclusion = report["exclusion"]
    if exclusion is not None:
        print(
            f", {exclusion['excluded']} excluded as copies of {exclusion['reference']} "
            f"({exclusion['exact']} exact, {exclusion['near']} near)",
            end="",
        )
    print()
    for note in report["notes"]:
        print(f"note: {note}")
    print("\n".join(summary_lines(m)).replace("test accuracy", "accuracy     ", 1))
    print(f"  (majority baseline: {m['majority_baseline_of']})")
    print(f"written: {out}/report.json, predictions.csv, " + ", ".join(report["artifacts"]["plots"]))


if __name__ == "__main__":
    sys.exit(run_main(main))
