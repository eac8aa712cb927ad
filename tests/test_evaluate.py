"""tuning.evaluate: a saved model scored on another labelled set, as the run scored its own test split."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from modules.phantom import make_phantom
from tuning import evaluate, evaluation
from tuning.cli import run_main


@pytest.fixture(scope="module")
def run(tiny_run):
    return tiny_run


@pytest.fixture(scope="module")
def test_split(run, tmp_path_factory):
    """The run's own test split, copied into a yes/no folder."""
    return run.write_split("test", tmp_path_factory.mktemp("test_split"))


def test_scores_equal_the_runs_own_test_report(run, test_split, tmp_path):
    report = evaluation.run_evaluation(run.checkpoint, test_split, tmp_path, command="test")
    mine, theirs = report["metrics"]["test"], run.report["metrics"]["test"]
    assert mine["n"] == theirs["n"] == len(run.data.indices("test"))
    assert mine["confusion_matrix"] == theirs["confusion_matrix"]
    for key in ("accuracy", "auroc", "sensitivity", "specificity", "f1"):
        assert mine[key] == pytest.approx(theirs[key], abs=1e-9, nan_ok=True), key
    # the image-level interval is the run's; the reported one resamples the scored images' duplicate groups
    assert mine["accuracy_ci95_independent"] == pytest.approx(theirs["accuracy_ci95"])
    assert mine["accuracy_ci95"][0] <= mine["accuracy"] <= mine["accuracy_ci95"][1]
    assert (
        f"bootstrap over the {mine['groups']} groups (copies, patients, volumes)" in mine["interval_method"]
    )
    counts = report["data"]["evaluated_classes"]
    assert mine["majority_baseline"] == pytest.approx(max(counts.values()) / sum(counts.values()))
    assert "evaluated set" in mine["majority_baseline_of"]
    assert report["kind"] == "evaluate" and report["data"]["fingerprint"] != run.data.images.fingerprint
    assert report["model"]["trained_on"]["fingerprint"] == run.data.images.fingerprint
    assert report["config"]["model"] == "cnn" and report["notes"] == []
    assert {"python", "torch", "pytorch_lightning"} <= set(report["versions"])
    assert json.loads((tmp_path / "report.json").read_text())["metrics"]["test"]["n"] == mine["n"]
    with open(tmp_path / "predictions.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == mine["n"]


def test_cli_writes_the_report_and_refuses_to_overwrite(run, test_split, tmp_path, capsys):
    out = tmp_path / "ev"
    args = ["--checkpoint", str(run.checkpoint), "--data", str(test_split), "--out", str(out)]
    assert run_main(evaluate.main, args) == 0
    printed = capsys.readouterr().out
    assert "accuracy" in printed and "majority baseline" in printed and "ROC AUC" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["command"].startswith("python -m tuning.evaluate --checkpoint")
    for name in ("predictions.csv", "confusion_matrix.png", "roc.png", "report.md", "report.html"):
        assert (out / name).is_file(), name
    assert "# Evaluation report" in (out / "report.md").read_text()
    assert report["artifacts"]["plots"] == ["confusion_matrix.png", "roc.png"]
    assert run_main(evaluate.main, args) == 2
    assert "already holds a report.json" in capsys.readouterr().err
    assert run_main(evaluate.main, [*args, "--overwrite"]) == 0


def test_bad_files_are_warned_or_refused_with_strict(run, test_split, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(test_split, data)
    (data / "yes" / "broken.png").write_bytes(b"not an image at all")
    out = tmp_path / "ev"
    args = ["--checkpoint", str(run.checkpoint), "--data", str(data), "--out", str(out)]
    assert run_main(evaluate.main, args) == 0
    assert "warning: skipped yes/broken.png: not an image" in capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert report["data"]["skipped"] == 1 and report["data"]["skipped_files"][0]["path"] == "yes/broken.png"
    assert report["metrics"]["test"]["n"] == len(run.data.indices("test"))
    assert run_main(evaluate.main, [*args, "--out", str(tmp_path / "strict"), "--strict"]) == 2
    err = capsys.readouterr().err
    assert "--strict refuses bad files" in err and "Traceback" not in err


def test_training_data_is_flagged(run, tmp_path):
    report = evaluation.run_evaluation(run.checkpoint, run.phantom, tmp_path)
    assert report["notes"] and "trained on" in report["notes"][0]


def test_exclude_duplicates_of_counts_the_copies(run, tmp_path, capsys):
    reference = make_phantom(tmp_path / "reference", n_per_class=6, size=64, seed=21)
    data = make_phantom(tmp_path / "data", n_per_class=5, size=64, seed=22)
    shutil.copyfile(reference / "yes" / "yes_0.png", data / "yes" / "exact_copy.png")
    for name, size in (("no/no_1.png", (80, 80)), ("yes/yes_2.png", (96, 96))):
        with Image.open(reference / name) as img:
            img.resize(size, Image.Resampling.BILINEAR).save(
                data / Path(name).parent / f"resized_{Path(name).name}"
            )
    out = tmp_path / "ev"
    args = ["--checkpoint", str(run.checkpoint), "--data", str(data), "--out", str(out)]
    assert run_main(evaluate.main, [*args, "--exclude-duplicates-of", str(reference)]) == 0
    assert "3 excluded as copies" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    excl = report["exclusion"]
    assert (excl["excluded"], excl["exact"], excl["near"]) == (3, 1, 2)
    assert report["data"]["excluded"] == 3 and report["metrics"]["test"]["n"] == 10
    by_path = {f["path"]: f for f in excl["files"]}
    assert set(by_path) == {"yes/exact_copy.png", "no/resized_no_1.png", "yes/resized_yes_2.png"}
    assert by_path["yes/exact_copy.png"]["kind"] == "exact"
    assert by_path["yes/exact_copy.png"]["copy_of"] == ["yes/yes_0.png"]
    assert by_path["no/resized_no_1.png"] == {
        "path": "no/resized_no_1.png",
        "label": "no",
        "kind": "near",
        "copy_of": ["no/no_1.png"],
    }
    # without the option every image is scored
    plain = evaluation.run_evaluation(run.checkpoint, data, tmp_path / "plain")
    assert plain["metrics"]["test"]["n"] == 13 and plain["exclusion"] is None


def test_everything_excluded_is_a_clear_error(run, test_split, tmp_path, capsys):
    args = ["--checkpoint", str(run.checkpoint), "--data", str(test_split), "--out", str(tmp_path / "o")]
    assert run_main(evaluate.main, [*args, "--exclude-duplicates-of", str(run.phantom)]) == 2
    assert "nothing is left to evaluate" in capsys.readouterr().err


def test_the_bootstrap_auc_equals_sklearns():
    """modules.statistics.rank_auc (the fast AUC inside the bootstrap interval) against sklearn, with ties."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from modules.statistics import rank_auc

    rng = np.random.default_rng(0)
    for _ in range(200):
        y = np.r_[0, 1, rng.integers(0, 2, int(rng.integers(0, 40)))]
        scores = np.round(rng.random(len(y)), int(rng.integers(1, 4)))  # rounding makes ties
        assert rank_auc(y, scores) == pytest.approx(roc_auc_score(y, scores), abs=1e-12)


def test_an_ensemble_of_checkpoints_scores_the_mean_of_their_probabilities(run, test_split, tmp_path):
    one = evaluation.run_evaluation(run.checkpoint, test_split, tmp_path / "one")
    two = evaluation.run_evaluation([run.checkpoint, run.checkpoint], test_split, tmp_path / "two")
    assert two["metrics"]["test"]["confusion_matrix"] == one["metrics"]["test"]["confusion_matrix"]
    assert len(two["ensemble"]) == 2 and one["ensemble"] is None
    assert (tmp_path / "two" / "predictions.csv").read_text() == (
        tmp_path / "one" / "predictions.csv"
    ).read_text()


def test_two_models_scored_on_one_set_compare_paired_by_group(run, test_split, tmp_path):
    """predictions.csv records each image's class index and group, so compare_cv pairs two evaluations of the
    same images (resampling the groups the intervals resample); a cross-validation is not paired with one."""
    import torch

    from benchmarks.compare_cv import compare

    saved = torch.load(run.checkpoint, weights_only=True)
    bias = [k for k in saved["state_dict"] if k.endswith("bias")][-1]  # the last layer's: shifts every logit
    saved["state_dict"][bias] = saved["state_dict"][bias] + torch.tensor([2.0, -2.0])
    other = tmp_path / "other.pt"
    torch.save(saved, other)
    a = evaluation.run_evaluation(run.checkpoint, test_split, tmp_path / "a", command="a")
    b = evaluation.run_evaluation(other, test_split, tmp_path / "b", command="b")
    with open(tmp_path / "a" / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    classes = a["model"]["classes"]
    assert all(classes[int(r["target"])] == r["label"] for r in rows)
    assert len({r["group"] for r in rows}) == a["metrics"]["test"]["groups"]
    result = compare(tmp_path / "a", tmp_path / "b")
    assert result["n"] == len(rows) and result["groups"] == a["metrics"]["test"]["groups"]
    acc = result["metrics"]["accuracy"]
    assert acc["a"] == pytest.approx(a["metrics"]["test"]["accuracy"])
    assert acc["b"] == pytest.approx(b["metrics"]["test"]["accuracy"])
    assert acc["difference"] == pytest.approx(acc["b"] - acc["a"])
    assert acc["b"] == pytest.approx(sum(r["label"] == "no" for r in rows) / len(rows))  # pushed to "no"
    cv = tmp_path / "cv"
    shutil.copytree(tmp_path / "b", cv)
    report = json.loads((cv / "report.json").read_text())
    (cv / "report.json").write_text(json.dumps({**report, "kind": "cv"}))
    with pytest.raises(ValueError, match="compare like with like"):
        compare(tmp_path / "a", cv)
