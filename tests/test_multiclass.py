"""N classes end to end: a 3-class phantom search, its checkpoint evaluated and used for prediction; the
positive class of two-class sets; the yes/no set unchanged."""

import csv
import json

import numpy as np
import pytest
import torch

from modules.checkpoint import load_classifier
from modules.dataset import prepare_data
from modules.phantom import make_phantom
from modules.sources import DatasetError
from tests.helpers import TINY_SEARCH as TINY
from tuning import data as data_cli
from tuning import evaluation, prediction, search
from tuning.cli import run_main

CLASSES = ("none", "meningioma_like", "glioma_like")  # the first without a mass, then two kinds of mass


@pytest.fixture(scope="module")
def three_classes(tmp_path_factory):
    return make_phantom(tmp_path_factory.mktemp("three"), n_per_class=12, size=64, seed=4, classes=CLASSES)


def test_three_class_search_evaluate_and_predict(ray_local, three_classes, tmp_path, capsys):
    run = tmp_path / "run"
    args = [
        "--space",
        "baseline_cnn",
        "--data",
        str(three_classes),
        "--num-samples",
        "2",
        "--max-epochs",
        "2",
        "--grace-period",
        "1",
        "--set",
        "class_weights=balanced",
        "--out",
        str(run),
        *TINY,
    ]
    assert run_main(search.main, args) == 0
    printed = capsys.readouterr().out
    assert "macro recall" in printed and "sensitivity" not in printed

    report = json.loads((run / "report.json").read_text())
    test = report["metrics"]["test"]
    classes = ["glioma_like", "meningioma_like", "none"]  # discovered: sorted by name
    assert (
        report["data"]["classes"] == dict.fromkeys(classes, 12) and report["data"]["positive_class"] is None
    )
    assert test["classes"] == test["confusion_labels"] == classes and test["positive_class"] is None
    assert (
        np.asarray(test["confusion_matrix"]).shape == (3, 3) and np.sum(test["confusion_matrix"]) == test["n"]
    )
    assert set(test["per_class"]) == set(classes)
    assert 0 <= test["recall_macro"] <= 1 and 0 <= test["auroc_macro"] <= 1
    assert test["sensitivity"] is None and test["auroc"] is None and test["f1"] is None
    md = (run / "report.md").read_text()
    assert "macro recall" in md and "sensitivity" not in md and "n/a" not in md
    assert "roc.png" in report["artifacts"]["plots"]

    network, meta = load_classifier(run / "model.pt")
    assert meta["format_version"] == 2 and meta["classes"] == classes and meta["positive_class"] is None
    with torch.no_grad():
        assert network(torch.zeros(1, 3, 32, 32)).shape == (1, 3)  # the head is sized from the data

    ev = evaluation.run_evaluation(run / "model.pt", three_classes, tmp_path / "ev")
    assert np.asarray(ev["metrics"]["test"]["confusion_matrix"]).shape == (3, 3)
    assert ev["metrics"]["test"]["n"] == 36 and ev["notes"]  # its own training data: said so

    scans = sorted((three_classes / "glioma_like").iterdir())[:2]
    rows, _ = prediction.run_prediction(run / "model.pt", scans, tmp_path / "pred")
    with open(tmp_path / "pred" / "predictions.csv", newline="") as fh:
        written = list(csv.DictReader(fh))
    for row, line in zip(rows, written, strict=True):
        probs = [float(line[f"prob_{c}"]) for c in classes]
        assert sum(probs) == pytest.approx(1, abs=1e-5) and line["probability"] == ""
        assert list(row["probs"]) == classes and row["probability"] is None
        assert line["label"] == classes[int(np.argmax(probs))] == line["heatmap_class"]
        assert (tmp_path / "pred" / line["heatmap"]).is_file()
    table = prediction.format_table(rows, classes)
    assert all(f"P({c})" in table for c in classes)


def _two_classes(root, names=("normal", "pneumonia")):
    return make_phantom(root, n_per_class=8, size=48, seed=1, classes=names)


def test_two_classes_without_yes_need_a_positive_class(tmp_path, capsys):
    root = _two_classes(tmp_path / "xray")
    with pytest.raises(
        DatasetError, match=r"two classes \(normal, pneumonia\) and no 'yes'.*--positive-class"
    ):
        prepare_data(root)
    data = prepare_data(root, positive_class="Pneumonia")
    assert data.positive == 1 and data.positive_class == "pneumonia"
    assert prepare_data(root, positive_class="normal").trial_data().positive == 0
    with pytest.raises(
        DatasetError, match=r"'tumour' is not a class of this set; expected one of normal, pn"
    ):
        prepare_data(root, positive_class="tumour")
    assert run_main(data_cli.main, [str(root)]) == 2
    assert "--positive-class" in capsys.readouterr().err
    assert run_main(data_cli.main, [str(root), "--positive-class", "pneumonia", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["positive_class"] == "pneumonia"


def test_a_positive_class_for_more_classes_is_an_error(tmp_path):
    root = make_phantom(tmp_path / "three", n_per_class=4, size=48, seed=1, classes=("a", "b", "c"))
    with pytest.raises(DatasetError, match=r"given, but the set has 3 classes \(a, b, c\); expected it only"):
        prepare_data(root, positive_class="b")


def test_the_yes_no_set_splits_exactly_as_before(search_phantom):
    found = prepare_data(search_phantom, seed=3)
    given = prepare_data(search_phantom, seed=3, classes=("no", "yes"), positive_class="yes")
    assert found.images.classes == ("no", "yes") and found.positive == 1 == given.positive
    assert found.split_csv() == given.split_csv()
    assert found.trial_data().targets == given.trial_data().targets


@pytest.mark.realdata
def test_real_set_discovers_no_and_yes_with_yes_positive(real_data):
    data = prepare_data(real_data, seed=0)
    assert data.images.classes == ("no", "yes") and data.positive_class == "yes"
    assert data.split_csv() == prepare_data(real_data, seed=0, classes=("no", "yes")).split_csv()
