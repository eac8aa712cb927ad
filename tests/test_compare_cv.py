"""benchmarks/compare_cv.py: the paired difference of two cross-validated runs on the same images."""

import csv
import json

import numpy as np
import pytest

from benchmarks.compare_cv import compare


def _fake_run(folder, probs_yes, *, fingerprint="f" * 64, paths=None):
    folder.mkdir()
    n = len(probs_yes)
    paths = paths or [f"img{i}.png" for i in range(n)]
    report = {
        "kind": "cv",
        "data": {
            "fingerprint": fingerprint,
            "classes": {"no": n // 2, "yes": n - n // 2},
            "positive_class": "yes",
        },
    }
    (folder / "report.json").write_text(json.dumps(report))
    with open(folder / "predictions.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "label", "group", "fold", "target", "prob_no", "prob_yes"])
        w.writeheader()
        for i, (path, p) in enumerate(zip(paths, probs_yes, strict=True)):
            target = int(i >= n // 2)
            w.writerow(
                {
                    "path": path,
                    "label": ["no", "yes"][target],
                    "group": f"g{i // 2}",
                    "fold": 1,
                    "target": target,
                    "prob_no": 1 - p,
                    "prob_yes": p,
                }
            )
    return folder


def test_a_clearly_better_run_has_a_difference_interval_above_zero(tmp_path):
    n = 80
    truth = np.arange(n) >= n // 2
    rng = np.random.default_rng(0)
    worse = np.where(rng.random(n) < 0.35, ~truth, truth).astype(float) * 0.8 + 0.1  # about 65% right
    better = truth.astype(float) * 0.8 + 0.1  # all right
    a = _fake_run(tmp_path / "a", worse.tolist())
    b = _fake_run(tmp_path / "b", better.tolist())
    result = compare(a, b)
    acc = result["metrics"]["accuracy"]
    assert acc["b"] == 1.0 and acc["difference"] > 0.2 and acc["difference_ci95"][0] > 0
    assert result["groups"] == n // 2
    same = compare(a, a)["metrics"]["accuracy"]
    assert same["difference"] == 0 and same["difference_ci95"] == [0.0, 0.0]


def test_runs_on_different_images_are_refused(tmp_path):
    a = _fake_run(tmp_path / "a", [0.2, 0.8, 0.3, 0.9])
    b = _fake_run(tmp_path / "b", [0.2, 0.8, 0.3, 0.9], paths=["x0", "x1", "x2", "x3"])
    with pytest.raises(ValueError, match="scored different images"):
        compare(a, b)


def test_a_two_class_run_from_before_n_classes_still_compares(tmp_path):
    """Its predictions.csv has one 'prob' column (the last class's) and its report no positive class."""
    probs = [0.2, 0.7, 0.4, 0.9, 0.1, 0.6]
    new = _fake_run(tmp_path / "new", probs)
    old = tmp_path / "old"
    old.mkdir()
    report = json.loads((new / "report.json").read_text())
    del report["data"]["positive_class"]
    (old / "report.json").write_text(json.dumps(report))
    rows = list(csv.DictReader((new / "predictions.csv").open()))
    with open(old / "predictions.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "label", "group", "fold", "target", "prob"])
        w.writeheader()
        for r in rows:
            w.writerow(
                {k: r[k] for k in ("path", "label", "group", "fold", "target")} | {"prob": r["prob_yes"]}
            )
    result = compare(old, new)
    assert set(result["metrics"]) == {"accuracy", "auroc", "sensitivity", "specificity"}
    assert all(m["difference"] == pytest.approx(0.0) for m in result["metrics"].values())
