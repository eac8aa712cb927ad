"""Statistics of a classifier's predictions: every interval and metric that reports, cross-validation and the
benchmarks print comes from here.

Proportions get Wilson score intervals; ROC AUCs percentile bootstraps over images; cross-validated results a
percentile bootstrap over whole duplicate groups (images of one group are not independent).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from sklearn.metrics import roc_auc_score

Z95 = 1.959963984540054
N_BOOT = 2000
BINARY_SCORES = ("accuracy", "auroc", "sensitivity", "specificity")
MULTI_SCORES = ("accuracy", "auroc_macro", "recall_macro")
INTERVAL_METHOD = (
    "Wilson score (accuracy, sensitivity, specificity); percentile bootstrap, 2000 resamples (AUC)"
)
MULTI_INTERVAL_METHOD = (
    "Wilson score (accuracy, per-class recall); percentile bootstrap, 2000 resamples (macro one-vs-rest AUC)"
)
# fields of a two-class result that are None for more classes
BINARY_ONLY = ("auroc", "auroc_ci95", "sensitivity", "sensitivity_ci95", "specificity", "specificity_ci95")
BINARY_ONLY += ("f1", "threshold")


def percentile_interval(values: Sequence[float]) -> list[float]:
    """The 2.5th and 97.5th percentiles of bootstrap ``values``; [nan, nan] when there are none."""
    if len(values) == 0:
        return [math.nan, math.nan]
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


def wilson_interval(successes: int, n: int, z: float = Z95) -> list[float]:
    """95% Wilson score interval of a proportion; [nan, nan] when n == 0."""
    if n == 0:
        return [math.nan, math.nan]
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return [max(0.0, centre - half), min(1.0, centre + half)]


def rank_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney statistic with mid-ranks for ties: the value of sklearn's
    ``roc_auc_score``, without its input validation (which costs ~30 ms a call, 2000 calls per interval)."""
    y = np.asarray(labels) == 1
    _, inverse, counts = np.unique(np.asarray(scores), return_inverse=True, return_counts=True)
    mid_ranks = np.cumsum(counts) - (counts - 1) / 2.0  # 1-based, ties share their mean rank
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    return float((mid_ranks[inverse][y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def bootstrap_auc_interval(
    labels: np.ndarray, probs: np.ndarray, *, seed: int = 0, n_boot: int = 2000
) -> list[float]:
    """Percentile bootstrap 95% interval of the ROC AUC (resamples lacking a class are redrawn)."""
    rng = np.random.default_rng(seed)
    labels, probs = np.asarray(labels), np.asarray(probs)
    n = len(labels)
    values = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        if labels[idx].min() == labels[idx].max():
            continue
        values.append(rank_auc(labels[idx], probs[idx]))
    return percentile_interval(values)


def binary_metrics(
    probs: Sequence[float],
    labels: Sequence[int],
    *,
    majority_baseline: float,
    threshold: float = 0.5,
    seed: int = 0,
) -> dict:
    """Accuracy, AUC, sensitivity, specificity, F1 and the confusion matrix [[tn, fp], [fn, tp]], with intervals.

    ``probs``: probability of the positive class; ``labels``: 1 for positive, 0 for negative.
    """
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    pred = (p >= threshold).astype(np.int64)
    tp = int(((pred == 1) & (y == 1)).sum())
    tn = int(((pred == 0) & (y == 0)).sum())
    fp = int(((pred == 1) & (y == 0)).sum())
    fn = int(((pred == 0) & (y == 1)).sum())
    n = len(y)
    both = 0 < y.sum() < n
    f1_denom = 2 * tp + fp + fn
    return {
        "n": n,
        "accuracy": (tp + tn) / n if n else math.nan,
        "accuracy_ci95": wilson_interval(tp + tn, n),
        "majority_baseline": majority_baseline,
        "auroc": float(roc_auc_score(y, p)) if both else math.nan,
        "auroc_ci95": bootstrap_auc_interval(y, p, seed=seed) if both else [math.nan, math.nan],
        "sensitivity": tp / (tp + fn) if tp + fn else math.nan,
        "sensitivity_ci95": wilson_interval(tp, tp + fn),
        "specificity": tn / (tn + fp) if tn + fp else math.nan,
        "specificity_ci95": wilson_interval(tn, tn + fp),
        "f1": 2 * tp / f1_denom if f1_denom else math.nan,
        "threshold": threshold,
        "confusion_matrix": [[tn, fp], [fn, tp]],
        "interval_method": INTERVAL_METHOD,
    }


def macro_ovr_auc(labels: np.ndarray, probs: np.ndarray, present: Sequence[int]) -> float:
    """Mean over the classes ``present`` of the one-vs-rest ROC AUC of column k of ``probs`` (n, N)."""
    return float(np.mean([rank_auc((labels == k).astype(np.int64), probs[:, k]) for k in present]))


def bootstrap_macro_auc_interval(
    labels: np.ndarray, probs: np.ndarray, present: Sequence[int], *, seed: int = 0, n_boot: int = 2000
) -> list[float]:
    """Percentile bootstrap 95% interval of ``macro_ovr_auc`` (resamples lacking a class of ``present`` are
    skipped)."""
    rng = np.random.default_rng(seed)
    n, values = len(labels), []
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        y = labels[idx]
        counts = np.bincount(y, minlength=probs.shape[1])
        if any(counts[k] == 0 or counts[k] == n for k in present):
            continue
        values.append(macro_ovr_auc(y, probs[idx], present))
    return percentile_interval(values)


def classification_metrics(
    probs: np.ndarray,
    labels: Sequence[int],
    classes: Sequence[str],
    *,
    positive: int | None = None,
    majority_baseline: float,
    threshold: float = 0.5,
    seed: int = 0,
) -> dict:
    """Test metrics of class probabilities ``probs`` (n, N) against class indices ``labels`` (n,).

    Every result has ``n``, ``accuracy`` (+ Wilson ``accuracy_ci95``), ``majority_baseline``, ``classes``,
    ``positive_class``, ``per_class`` ({class: {n, recall, recall_ci95, precision}}), ``recall_macro`` and
    ``precision_macro`` (means over the classes present in ``labels``), ``auroc_macro`` (mean one-vs-rest ROC
    AUC over those classes, + bootstrap ``auroc_macro_ci95``), ``confusion_matrix`` and ``confusion_labels``
    (its row/column class order). Two classes (``positive``: index of the positive class, required): the
    prediction is the positive class where its probability is >= ``threshold``; the result holds exactly
    ``binary_metrics``'s fields (``confusion_matrix`` [[tn, fp], [fn, tp]]) plus the general ones. More
    classes: the prediction is the most probable class, ``confusion_matrix`` is N x N (rows true, columns
    predicted, in ``classes`` order) and the binary-only fields (``auroc``, ``sensitivity``, ``specificity``,
    ``f1``, ``threshold`` and their intervals) are None.
    """
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    k = len(classes)
    if p.ndim != 2 or p.shape != (len(y), k):
        raise ValueError(
            f"probs must have shape (n, {k}) for {k} classes and n={len(y)} labels, got {p.shape}"
        )
    if k != 2:
        if positive is not None:
            raise ValueError(f"{k} classes are scored one-vs-rest; expected positive=None, got {positive!r}")
        return _multiclass_metrics(p, y, classes, majority_baseline, seed=seed)
    if positive not in (0, 1):
        raise ValueError(f"two classes need positive = 0 or 1 (the positive class), got {positive!r}")
    is_positive = (y == positive).astype(np.int64)
    out = binary_metrics(
        p[:, positive], is_positive, majority_baseline=majority_baseline, threshold=threshold, seed=seed
    )
    negative = 1 - positive
    pred = np.where(p[:, positive] >= threshold, positive, negative)
    general = _general_metrics(p, y, pred, classes, seed=seed, binary_auc=out)
    general["confusion_labels"] = [classes[negative], classes[positive]]
    general["positive_class"] = classes[positive]
    return {**out, **general}


def _multiclass_metrics(p: np.ndarray, y: np.ndarray, classes, baseline: float, *, seed: int) -> dict:
    """``classification_metrics`` of more than two classes (``p`` (n, N), ``y`` (n,)), scored one-vs-rest."""
    pred = p.argmax(axis=1)
    n, k = len(y), len(classes)
    correct = int((pred == y).sum())
    matrix = np.zeros((k, k), dtype=np.int64)
    np.add.at(matrix, (y, pred), 1)
    return {
        "n": n,
        "accuracy": correct / n if n else math.nan,
        "accuracy_ci95": wilson_interval(correct, n),
        "majority_baseline": baseline,
        **dict.fromkeys(BINARY_ONLY),
        "confusion_matrix": matrix.tolist(),
        "interval_method": MULTI_INTERVAL_METHOD,
        **_general_metrics(p, y, pred, classes, seed=seed),
        "confusion_labels": list(classes),
        "positive_class": None,
    }


def _general_metrics(
    p: np.ndarray, y: np.ndarray, pred: np.ndarray, classes: Sequence[str], *, seed: int, binary_auc=None
) -> dict:
    """Per-class and macro recall and precision of the predictions ``pred``; macro one-vs-rest AUC."""
    per_class = {}
    for k, name in enumerate(classes):
        support, predicted = int((y == k).sum()), int((pred == k).sum())
        hits = int(((y == k) & (pred == k)).sum())
        per_class[name] = {
            "n": support,
            "recall": hits / support if support else math.nan,
            "recall_ci95": wilson_interval(hits, support),
            "precision": hits / predicted if predicted else math.nan,
        }
    present = [k for k in range(len(classes)) if 0 < per_class[classes[k]]["n"] < len(y)]
    if binary_auc is not None:  # two classes: both one-vs-rest AUCs are the AUC of the positive class
        auc, auc_ci = binary_auc["auroc"], binary_auc["auroc_ci95"]
    elif len(present) >= 2:
        auc = macro_ovr_auc(y, p, present)
        auc_ci = bootstrap_macro_auc_interval(y, p, present, seed=seed)
    else:
        auc, auc_ci = math.nan, [math.nan, math.nan]
    # macro averages over the classes present in the labels; a class never predicted has precision 0 there
    # (as scikit-learn's and torchmetrics' macro precision count it), so predicting one class is not rewarded
    recalls = [v["recall"] for v in per_class.values() if v["n"]]
    precisions = [0.0 if math.isnan(v["precision"]) else v["precision"] for v in per_class.values() if v["n"]]
    return {
        "classes": list(classes),
        "per_class": per_class,
        "recall_macro": float(np.mean(recalls)) if recalls else math.nan,
        "precision_macro": float(np.mean(precisions)) if precisions else math.nan,
        "auroc_macro": auc,
        "auroc_macro_ci95": auc_ci,
    }


def scores(
    probs: np.ndarray, y: np.ndarray, positive: int | None, threshold: float = 0.5
) -> dict[str, float]:
    """The headline metrics of class probabilities ``probs`` (n, N) against class indices ``y`` (nan where
    undefined). Two classes (``positive`` given): accuracy, ROC AUC, sensitivity, specificity. More classes:
    accuracy, macro one-vs-rest ROC AUC, macro recall."""
    if positive is not None:
        p = probs[:, positive]
        pred = p >= threshold
        pos = y == positive
        neg = ~pos
        return {
            "accuracy": float((pred == pos).mean()) if len(y) else math.nan,
            "auroc": rank_auc(pos.astype(int), p) if pos.any() and neg.any() else math.nan,
            "sensitivity": float(pred[pos].mean()) if pos.any() else math.nan,
            "specificity": float((~pred[neg]).mean()) if neg.any() else math.nan,
        }
    pred = probs.argmax(axis=1)
    present = [c for c in range(probs.shape[1]) if (y == c).any()]
    aucs = [rank_auc((y == c).astype(int), probs[:, c]) for c in present if (y != c).any()]
    return {
        "accuracy": float((pred == y).mean()) if len(y) else math.nan,
        "auroc_macro": float(np.mean(aucs)) if aucs else math.nan,
        "recall_macro": float(np.mean([(pred[y == c] == c).mean() for c in present]))
        if present
        else math.nan,
    }


def group_bootstrap(
    probs: np.ndarray,
    y: np.ndarray,
    groups: list[str],
    *,
    positive: int | None = 1,
    seed: int = 0,
    n_boot: int = N_BOOT,
) -> dict[str, list[float]]:
    """95% percentile intervals of ``scores`` from resampling whole duplicate groups with replacement.
    ``probs``: (n, N) class probabilities, or (n,) positive-class probabilities of a two-class problem."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim == 1:
        probs = np.stack([1 - probs, probs], axis=1)
    y = np.asarray(y)
    members: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    blocks = [np.asarray(v) for _, v in sorted(members.items())]
    rng = np.random.default_rng(seed)
    values: dict[str, list[float]] = {}
    for _ in range(n_boot):
        idx = np.concatenate([blocks[j] for j in rng.integers(0, len(blocks), len(blocks))])
        for k, v in scores(probs[idx], y[idx], positive).items():
            values.setdefault(k, [])
            if not math.isnan(v):
                values[k].append(v)
    return {k: percentile_interval(v) for k, v in values.items()}
