"""Every plot a run writes: loss curves, confusion matrix, ROC curves, and the trials' validation curves.

Figures are drawn with matplotlib's object API (``Figure``), never pyplot: no backend is chosen, no global state
is touched, and a plot works the same in a driver, a Ray worker or a test.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import roc_auc_score, roc_curve

from modules.statistics import rank_auc


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
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
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
    return Path(path)


def plot_confusion(
    matrix: list[list[int]], classes: Sequence[str], path: str | Path, *, title: str = ""
) -> Path:
    m = np.asarray(matrix)
    fig = Figure(figsize=(3.6, 3.2))
    ax = fig.subplots()
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
    return Path(path)


def plot_roc(
    probs: Sequence[float], labels: Sequence[int], path: str | Path, *, title: str = ""
) -> Path | None:
    y = np.asarray(labels)
    if not 0 < y.sum() < len(y):
        return None
    fpr, tpr, _ = roc_curve(y, np.asarray(probs))
    auc = roc_auc_score(y, probs)
    fig = Figure(figsize=(4, 4))
    ax = fig.subplots()
    ax.plot(fpr, tpr, label=f"AUC = {auc:.3f}")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(title or "ROC (test)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return Path(path)


def plot_roc_ovr(
    probs: np.ndarray, labels: Sequence[int], classes: Sequence[str], path: str | Path, *, title: str = ""
) -> Path | None:
    """One-vs-rest ROC curve of every class present (N classes); None when fewer than two are present."""
    y, p = np.asarray(labels), np.asarray(probs)
    present = [k for k in range(len(classes)) if 0 < (y == k).sum() < len(y)]
    if len(present) < 2:
        return None
    fig = Figure(figsize=(4.5, 4.5))
    ax = fig.subplots()
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
    return Path(path)


def plot_trial_curves(trials: list[dict], path: Path, *, metric: str, max_t: int) -> Path:
    """Every trial's validation curve; a cross marks a trial that ASHA stopped before max_t."""
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for t in trials:
        if not t["history"]:
            continue
        xs, ys = zip(*t["history"], strict=True)
        (line,) = ax.plot(xs, ys, "-", lw=1, alpha=0.8)
        if xs[-1] < max_t and t["status"] == "TERMINATED":
            ax.plot(xs[-1], ys[-1], "x", color=line.get_color(), ms=8)
    ax.plot([], [], "kx", label="stopped by ASHA")
    ax.set_xlabel("epoch (training iteration)")
    ax.set_ylabel(metric.replace("_", "/"))
    ax.set_title(f"validation curves of {len(trials)} trials")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path
