"""Score a saved model on another labelled set (``python -m tuning.evaluate``), optionally leaving out the
images that are copies of another set (e.g. its training data)."""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

from modules.checkpoint import (
    decide_labels,
    eval_transform,
    load_classifier,
    model_info,
    positive_index,
    predict_probabilities,
    uses_flip_tta,
)
from modules.duplicates import DEFAULT_THRESHOLD, group_duplicates
from modules.files import atomic_write_json, atomic_write_text
from modules.groups_file import read_groups_file
from modules.ingest import ImageRecord, ImageSet, load_image_set
from modules.nifti import SliceChoice
from modules.progress_lines import ProgressLines
from modules.sources import display_path
from modules.statistics import N_BOOT, classification_metrics, group_bootstrap
from modules.subjects import subject_links, subjects_of
from tuning.copies import exclude_copies
from tuning.formatting import summary_lines
from tuning.html_report import run_markdown, write_html_report
from tuning.plots import plot_confusion, plot_roc, plot_roc_ovr
from tuning.provenance import versions


def _predictions_csv(
    paths: list[str],
    labels: list[str],
    probs_all: np.ndarray,
    pred: list[str],
    classes: list[str],
    pos,
    *,
    targets,
    groups: list[str],
) -> str:
    """One row per image: path, true label, the positive class's probability (``probability``, two classes
    only, empty otherwise), the predicted class, ``prob_<class>`` for every class, then the true class's index
    (``target``) and the image's group (``group``: copies, patients, volumes, as the intervals resample them),
    so that ``benchmarks.compare_cv`` can pair two models scored on the same images."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(
        ["path", "label", "probability", "predicted", *[f"prob_{c}" for c in classes], "target", "group"]
    )
    rows = zip(paths, labels, probs_all, pred, targets, groups, strict=True)
    for path, label, row, predicted, target, group in rows:
        positive = "" if pos is None else f"{row[pos]:.6f}"
        writer.writerow([path, label, positive, predicted, *[f"{p:.6f}" for p in row], int(target), group])
    return buf.getvalue()


def run_evaluation(
    checkpoint: str | Path | list,
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
    groups: str | Path | None = None,
    choice: SliceChoice | None = None,
) -> dict:
    """Score ``checkpoint`` on the labelled set ``data``, write the report folder; returns the report.

    ``checkpoint``: one model.pt, or a list of them (an ensemble: the mean of their class probabilities; e.g.
    the fold models of a cross-validation). Intervals come from a bootstrap over the groups of the scored
    images (copies of one scan, and the images of one subject: a DICOM patient, a NIfTI volume, a group of the
    ``groups`` file, are not independent), beside the image-level ones. ``choice``: the slices of volumes."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be a probability in [0, 1], got {threshold}")
    paths = [checkpoint] if isinstance(checkpoint, str | Path) else list(checkpoint)
    models = [load_classifier(p) for p in paths]
    meta = _common_meta([m for _, m in models])
    images = load_image_set(data, classes=list(meta["classes"]), strict=strict, warn=warn, choice=choice)
    subjects = subjects_of(images.records, read_groups_file(groups, images, warn=warn) if groups else None)
    notes = _training_set_notes(images, meta)
    keep, exclusion = _images_to_score(images, exclude_duplicates_of, threshold=near_threshold, warn=warn)
    recs = [images.records[i] for i in keep]
    probs_all, y, test, pred = _score(models, meta, recs, threshold=threshold, batch_size=batch_size)
    kept_subjects = [subjects[i] for i in keep]
    groups = _group_intervals(test, probs_all, y, recs, kept_subjects, meta, threshold=near_threshold)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = _write_predictions(out, meta, recs, probs_all, pred, y, test, groups)
    synthetic = bool(notes and _trained_on(meta).get("synthetic"))
    report = {
        "kind": "evaluate",
        "command": command,
        "data": _data_block(images, recs, list(meta["classes"]), exclusion, synthetic=synthetic)
        | {"subjects": len({s for s in kept_subjects if s})},
        "model": model_info(meta),
        "ensemble": [model_info(m) for _, m in models] if len(models) > 1 else None,
        "config": meta.get("config"),
        "metrics": {"test": test},
        "exclusion": exclusion,
        "notes": notes,
        "versions": versions(),
        "artifacts": {
            "checkpoint": [str(p) for p in paths] if len(paths) > 1 else str(paths[0]),
            "predictions": "predictions.csv",
            "plots": [p.name for p in plots if p is not None],
        },
    }
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", run_markdown(report))
    write_html_report(out)
    return report


def _trained_on(meta: dict) -> dict:
    """The checkpoint's description of its training data ({} when it has none)."""
    return meta.get("data") or {}


def _training_set_notes(images: ImageSet, meta: dict) -> list[str]:
    """A warning when ``images`` is the very set the model was trained on (same fingerprint); else none."""
    if images.fingerprint == _trained_on(meta).get("fingerprint"):
        return [
            "this is the data set the model was trained on (all of its splits, training images included): "
            "these scores are optimistic, not a test result"
        ]
    return []


def _images_to_score(
    images: ImageSet, exclude_duplicates_of, *, threshold: float, warn
) -> tuple[list[int], dict | None]:
    """The indices of the images to score (all of ``images``, or those no copy of the set at
    ``exclude_duplicates_of``, read with the same slice choice) and the report's ``exclusion`` block (None when
    nothing was excluded by request)."""
    keep, exclusion = list(range(len(images.records))), None
    if exclude_duplicates_of is not None:
        keep, exclusion = exclude_copies(images, exclude_duplicates_of, threshold=threshold, warn=warn)
    return keep, exclusion


def _common_meta(metas: list[dict]) -> dict:
    """The first checkpoint's description, after checking that every model scores the same classes."""
    first = metas[0]
    for other in metas[1:]:
        if (
            list(other["classes"]) != list(first["classes"])
            or other["positive_class"] != first["positive_class"]
        ):
            raise ValueError(
                f"{other['path']} scores the classes {list(other['classes'])} (positive "
                f"{other['positive_class']!r}), {first['path']} {list(first['classes'])} (positive "
                f"{first['positive_class']!r}); expected an ensemble of models of the same classes"
            )
    return first


def _score(models: list, meta: dict, recs: list[ImageRecord], *, threshold: float, batch_size: int):
    """(class probabilities (n, N), class indices (n,), metrics, decided labels) of ``recs``: the mean of the
    ``models``' (network, meta) probabilities, each with its own preprocessing. The majority baseline is the
    evaluated set's own: the share of its most frequent class (ties: the positive class, then the class listed
    first)."""
    classes, positive = list(meta["classes"]), meta["positive_class"]
    pixels = [r.pixels for r in recs]
    probs_all = np.mean(
        [
            predict_probabilities(
                net,
                pixels,
                eval_transform(m),
                batch_size=batch_size,
                flip=uses_flip_tta(m),
                progress=ProgressLines(f"scoring with model {k} of {len(models)}", unit="images"),
            )
            for k, (net, m) in enumerate(models, start=1)
        ],
        axis=0,
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
    return probs_all, y, test, decide_labels(probs_all, meta, threshold=threshold)


def _group_intervals(
    test: dict, probs, y, recs: list[ImageRecord], subjects: list[str], meta: dict, *, threshold: float
) -> list[str]:
    """Replace ``test``'s intervals by a bootstrap over the scored images' groups (exact and near copies and
    ``subjects``, as the training protocol groups them); the image-level ones stay under
    ``*_ci95_independent``. Returns each scored image's group."""
    groups = group_duplicates(
        [r.sha256 for r in recs],
        [r.pixels for r in recs],
        [r.label for r in recs],
        threshold=threshold,
        together=subject_links(subjects),
    ).group
    intervals = group_bootstrap(probs, y, groups, positive=positive_index(meta))
    for k, ci in intervals.items():
        if f"{k}_ci95" in test:
            test[f"{k}_ci95_independent"] = test[f"{k}_ci95"]
        test[f"{k}_ci95"] = ci
    test["groups"] = len(set(groups))
    test["independent_interval_method"] = "as if images were independent: " + test["interval_method"]
    test["interval_method"] = (
        f"95% percentile bootstrap over the {len(set(groups))} groups (copies, patients, volumes) of the "
        f"{len(recs)} scored images "
        f"({N_BOOT} resamples of whole groups)"
    )
    return list(groups)


def _write_predictions(
    out: Path,
    meta: dict,
    recs: list[ImageRecord],
    probs_all: np.ndarray,
    pred: list[str],
    y,
    test: dict,
    groups: list[str],
) -> list:
    """``predictions.csv``, the confusion matrix and the ROC (one-vs-rest for more than two classes) under
    ``out``; returns the plots written (None for one left out)."""
    classes, pos = list(meta["classes"]), positive_index(meta)
    atomic_write_text(
        out / "predictions.csv",
        _predictions_csv(
            [display_path(r.path) for r in recs],
            [r.label for r in recs],
            probs_all,
            pred,
            classes,
            pos,
            targets=y,
            groups=groups,
        ),
    )
    return [
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


def _data_block(
    images: ImageSet, recs: list[ImageRecord], classes: list[str], exclusion: dict | None, *, synthetic: bool
) -> dict:
    """The report's ``data``: the set read (files, classes, what was skipped) and the part of it scored."""
    counts = Counter(r.label for r in recs)
    return {
        "source": images.source,
        "fingerprint": images.fingerprint,
        "synthetic": synthetic,
        "files": len(images.records),
        "classes": images.class_counts(),
        "skipped": len(images.skipped),
        "skipped_files": [{"path": display_path(s.path), "reason": s.reason} for s in images.skipped],
        "excluded": 0 if exclusion is None else exclusion["excluded"],
        "evaluated": len(recs),
        "evaluated_classes": {c: counts.get(c, 0) for c in classes},
    }


def evaluation_summary(report: dict, out: Path) -> str:
    """What ``tuning.evaluate`` prints: the model, the data scored, the metrics beside their baseline."""
    d, m, model = report["data"], report["metrics"]["test"], report["model"]
    trained = (model["trained_on"] or {}).get("source", "unknown data")
    counts = ", ".join(f"{c}: {n}" for c, n in d["evaluated_classes"].items())
    scored = f"data: {d['source']}: {d['evaluated']} images scored ({counts}); {d['skipped']} skipped"
    exclusion = report["exclusion"]
    if exclusion is not None:
        scored += (
            f", {exclusion['excluded']} excluded as copies of {exclusion['reference']} "
            f"({exclusion['exact']} exact, {exclusion['near']} near)"
        )
    return "\n".join(
        [
            f"\nmodel: {model['model']} from {model['checkpoint']} (trained on {trained})",
            scored,
            *[f"note: {note}" for note in report["notes"]],
            "\n".join(summary_lines(m)).replace("test accuracy", "accuracy     ", 1),
            f"  (majority baseline: {m['majority_baseline_of']})",
            f"written: {out}/report.json, predictions.csv, " + ", ".join(report["artifacts"]["plots"]),
        ]
    )
