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


def summary_lines(m: dict) -> list[str]:
    """A short human summary of a ``binary_metrics`` dict."""
    return [
        f"test accuracy     {fmt_ci(m['accuracy'], m['accuracy_ci95'])}   (n={m['n']})",
        f"majority baseline {100 * m['majority_baseline']:.1f}%",
        f"ROC AUC           {fmt_ci(m['auroc'], m['auroc_ci95'], pct=False)}",
        f"sensitivity       {fmt_ci(m['sensitivity'], m['sensitivity_ci95'])}",
        f"specificity       {fmt_ci(m['specificity'], m['specificity_ci95'])}",
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
