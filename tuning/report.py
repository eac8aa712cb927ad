"""Reports: metrics with 95% intervals beside the majority baseline, versions, and the plots of a run."""

from __future__ import annotations

import csv
import math
import platform
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_auc_score, roc_curve  # noqa: E402

Z95 = 1.959963984540054
INTERVAL_METHOD = (
    "Wilson score (accuracy, sensitivity, specificity); percentile bootstrap, 2000 resamples (AUC)"
)


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
    if not values:
        return [math.nan, math.nan]
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


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


MULTI_INTERVAL_METHOD = (
    "Wilson score (accuracy, per-class recall); percentile bootstrap, 2000 resamples (macro one-vs-rest AUC)"
)
BINARY_ONLY = (
    "auroc",
    "auroc_ci95",
    "sensitivity",
    "sensitivity_ci95",
    "specificity",
    "specificity_ci95",
    "f1",
    "threshold",
)


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
    if not values:
        return [math.nan, math.nan]
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


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
    ``precision_macro`` (means over the classes present in ``labels``), ``auroc_macro`` (mean one-vs-rest ROC AUC over the classes present, + bootstrap
    ``auroc_macro_ci95``), ``confusion_matrix`` and ``confusion_labels`` (the row/column class order).

    Two classes (``positive``: index of the positive class, required): the prediction is the positive class
    where its probability is >= ``threshold``, and the result holds exactly ``binary_metrics``'s fields
    (``confusion_matrix`` [[tn, fp], [fn, tp]]) plus the general ones. More classes: the prediction is the
    most probable class, ``confusion_matrix`` is N x N (rows true, columns predicted, in ``classes`` order)
    and the binary-only fields (``auroc``, ``sensitivity``, ``specificity``, ``f1``, ``threshold`` and their
    intervals) are None.
    """
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    k = len(classes)
    if p.ndim != 2 or p.shape != (len(y), k):
        raise ValueError(
            f"probs must have shape (n, {k}) for {k} classes and n={len(y)} labels, got {p.shape}"
        )
    if k == 2:
        if positive not in (0, 1):
            raise ValueError(f"two classes need positive = 0 or 1 (the positive class), got {positive!r}")
        out = binary_metrics(
            p[:, positive],
            (y == positive).astype(np.int64),
            majority_baseline=majority_baseline,
            threshold=threshold,
            seed=seed,
        )
        negative = 1 - positive
        pred = np.where(p[:, positive] >= threshold, positive, negative)
        general = _general_metrics(p, y, pred, classes, seed=seed, binary_auc=out)
        general["confusion_labels"] = [classes[negative], classes[positive]]
        general["positive_class"] = classes[positive]
        return {**out, **general}
    if positive is not None:
        raise ValueError(f"{k} classes are scored one-vs-rest; expected positive=None, got {positive!r}")
    pred = p.argmax(axis=1)
    n = len(y)
    correct = int((pred == y).sum())
    matrix = np.zeros((k, k), dtype=np.int64)
    np.add.at(matrix, (y, pred), 1)
    return {
        "n": n,
        "accuracy": correct / n if n else math.nan,
        "accuracy_ci95": wilson_interval(correct, n),
        "majority_baseline": majority_baseline,
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
        support, hits, predicted = (
            int((y == k).sum()),
            int(((y == k) & (pred == k)).sum()),
            int((pred == k).sum()),
        )
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


def versions() -> dict[str, str]:
    import pytorch_lightning
    import torch
    import torchvision

    out = {
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
        "pytorch_lightning": str(pytorch_lightning.__version__),
    }
    try:
        import ray

        out["ray"] = str(ray.__version__)
    except ImportError:  # pragma: no cover - ray is a dependency, but train/evaluate do not need it
        out["ray"] = "not installed"
    return out


def fmt_ci(value: float, ci: Sequence[float], *, pct: bool = True) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if pct:
        return f"{100 * value:.1f}% [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def is_binary(m: dict) -> bool:
    """Whether a metrics dict holds two-class results (sensitivity and the rest), not N-class ones."""
    return m.get("sensitivity") is not None


def _pct(value) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.1f}%"


def metric_rows(m: dict) -> list[tuple[str, str]]:
    """(name, formatted value) of the metrics that apply, after accuracy and the majority baseline: ROC AUC,
    sensitivity and specificity for two classes; macro AUC, recall, precision and per-class recall for N."""
    if is_binary(m):
        return [
            ("ROC AUC", fmt_ci(m["auroc"], m["auroc_ci95"], pct=False)),
            ("sensitivity", fmt_ci(m["sensitivity"], m["sensitivity_ci95"])),
            ("specificity", fmt_ci(m["specificity"], m["specificity_ci95"])),
        ]
    rows = [
        ("macro ROC AUC", fmt_ci(m["auroc_macro"], m["auroc_macro_ci95"], pct=False) + " (one-vs-rest)"),
        ("macro recall", _pct(m["recall_macro"])),
        ("macro precision", _pct(m["precision_macro"])),
    ]
    for name, c in m["per_class"].items():
        recall = fmt_ci(c["recall"], c["recall_ci95"]) if c["n"] else "none in the labels"
        precision = "never predicted" if math.isnan(c["precision"]) else f"precision {_pct(c['precision'])}"
        rows.append((f"recall {name}", f"{recall}, {precision}  (n={c['n']})"))
    return rows


def summary_lines(m: dict) -> list[str]:
    """A short human summary of a ``binary_metrics`` or ``classification_metrics`` dict."""
    return [
        f"test accuracy     {fmt_ci(m['accuracy'], m['accuracy_ci95'])}   (n={m['n']})",
        f"majority baseline {100 * m['majority_baseline']:.1f}%",
        *[f"{name:<17} {value}" for name, value in metric_rows(m)],
    ]


# ----------------------------------------------------------------------------- plots
def read_epoch_metrics(metrics_csv: str | Path) -> dict[str, dict[int, float]]:
    """Lightning's CSVLogger file -> {metric: {epoch: value}} (rows with empty cells merged by epoch)."""
    out: dict[str, dict[int, float]] = {}
    with open(metrics_csv, newline="") as fh:
        for row in csv.DictReader(fh):
            if not row.get("epoch"):
                continue
            epoch = int(float(row["epoch"]))
            for key, value in row.items():
                if key in ("epoch", "step") or value in ("", None):
                    continue
                out.setdefault(key, {})[epoch] = float(value)
    return out


def plot_loss_curves(
    metrics_csv: str | Path, path: str | Path, *, stage2_epoch: int | None = None, title: str = ""
) -> Path:
    series = read_epoch_metrics(metrics_csv)
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, style in (("train/loss", "-o"), ("val/loss", "-s")):
        if key in series:
            epochs = sorted(series[key])
            ax.plot([e + 1 for e in epochs], [series[key][e] for e in epochs], style, label=key, ms=3)
    if stage2_epoch is not None and stage2_epoch > 0:
        ax.axvline(stage2_epoch + 0.5, color="grey", ls="--", lw=1, label="stage 2 starts")
    ax.set_xlabel("epoch")
    ax.set_ylabel("cross-entropy")
    ax.set_title(title or "loss curves")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def plot_confusion(
    matrix: list[list[int]], classes: Sequence[str], path: str | Path, *, title: str = ""
) -> Path:
    m = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(3.6, 3.2))
    ax.imshow(m, cmap="Blues")
    for (i, j), v in np.ndenumerate(m):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > m.max() / 2 else "black")
    ax.set_xticks(range(len(classes)), labels=list(classes))
    ax.set_yticks(range(len(classes)), labels=list(classes))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def plot_roc(
    probs: Sequence[float], labels: Sequence[int], path: str | Path, *, title: str = ""
) -> Path | None:
    y = np.asarray(labels)
    if not 0 < y.sum() < len(y):
        return None
    fpr, tpr, _ = roc_curve(y, np.asarray(probs))
    auc = roc_auc_score(y, probs)
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot(fpr, tpr, label=f"AUC = {auc:.3f}")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(title or "ROC (test)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def plot_roc_ovr(
    probs: np.ndarray, labels: Sequence[int], classes: Sequence[str], path: str | Path, *, title: str = ""
) -> Path | None:
    """One-vs-rest ROC curve of every class present (N classes); None when fewer than two are present."""
    y, p = np.asarray(labels), np.asarray(probs)
    present = [k for k in range(len(classes)) if 0 < (y == k).sum() < len(y)]
    if len(present) < 2:
        return None
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for k in present:
        fpr, tpr, _ = roc_curve(y == k, p[:, k])
        ax.plot(fpr, tpr, label=f"{classes[k]} (AUC {rank_auc((y == k).astype(int), p[:, k]):.3f})")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
    ax.set_xlabel("false positive rate (class vs rest)")
    ax.set_ylabel("true positive rate (recall)")
    ax.set_title(title or "one-vs-rest ROC (test)")
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
