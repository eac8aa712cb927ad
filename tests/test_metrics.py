"""classification_metrics: the binary numbers of binary_metrics for two classes, sound N-class metrics."""

import json
import math

import numpy as np
import pytest
from sklearn.metrics import precision_score, recall_score, roc_auc_score

from modules.statistics import BINARY_ONLY, binary_metrics, classification_metrics
from tuning.formatting import summary_lines


def _binary_case(seed: int = 3, n: int = 40):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    p_yes = np.clip(0.3 * labels + 0.7 * rng.random(n), 0, 1)
    return np.stack([1 - p_yes, p_yes], axis=1), labels


@pytest.mark.parametrize("positive", [1, 0])
def test_two_classes_give_exactly_the_binary_metrics(positive):
    probs, labels = _binary_case()
    got = classification_metrics(
        probs, labels, ("no", "yes"), positive=positive, majority_baseline=0.6, seed=1
    )
    want = binary_metrics(probs[:, positive], (labels == positive).astype(int), majority_baseline=0.6, seed=1)
    for key, value in want.items():  # the same numbers, to the bit (json writes NaN as NaN)
        assert json.dumps(got[key]) == json.dumps(value), key
    assert got["positive_class"] == ("no", "yes")[positive]
    assert got["confusion_labels"] == [("no", "yes")[1 - positive], ("no", "yes")[positive]]
    # per-class recall of the positive class is the sensitivity, of the other the specificity
    assert got["per_class"][got["positive_class"]]["recall"] == pytest.approx(got["sensitivity"])
    assert got["per_class"][got["confusion_labels"][0]]["recall"] == pytest.approx(got["specificity"])
    assert got["auroc_macro"] == pytest.approx(got["auroc"])


def test_three_classes_on_a_hand_made_example():
    classes = ("glioma", "meningioma", "none")
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    probs = np.array(
        [
            [0.8, 0.1, 0.1],  # glioma, right
            [0.5, 0.4, 0.1],  # glioma, right
            [0.2, 0.7, 0.1],  # glioma, called meningioma
            [0.1, 0.6, 0.3],  # meningioma, right
            [0.3, 0.3, 0.4],  # meningioma, called none
            [0.1, 0.1, 0.8],  # none, right
            [0.2, 0.2, 0.6],  # none, right
            [0.6, 0.2, 0.2],  # none, called glioma
        ]
    )
    m = classification_metrics(probs, labels, classes, majority_baseline=3 / 8, seed=0)
    pred = probs.argmax(axis=1)
    assert m["n"] == 8 and m["accuracy"] == pytest.approx(5 / 8)
    assert m["accuracy_ci95"][0] < 5 / 8 < m["accuracy_ci95"][1]
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [1, 0, 2]]
    assert m["confusion_labels"] == list(classes) and m["positive_class"] is None
    assert m["recall_macro"] == pytest.approx(recall_score(labels, pred, average="macro"))
    assert m["precision_macro"] == pytest.approx(precision_score(labels, pred, average="macro"))
    meningioma = m["per_class"]["meningioma"]
    assert (meningioma["n"], meningioma["recall"], meningioma["precision"]) == (2, 0.5, 0.5)
    assert m["auroc_macro"] == pytest.approx(roc_auc_score(labels, probs, multi_class="ovr", average="macro"))
    lo, hi = m["auroc_macro_ci95"]
    assert 0 <= lo <= hi <= 1
    assert all(m[k] is None for k in BINARY_ONLY)  # binary-only fields are null, not wrong
    assert m["majority_baseline"] == 3 / 8


def test_a_class_absent_from_the_labels_and_a_class_never_predicted():
    labels = np.array([0, 0, 1, 1, 1])
    probs = np.array([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.3, 0.6, 0.1], [0.4, 0.5, 0.1]])
    m = classification_metrics(probs, labels, ("a", "b", "c"), majority_baseline=0.6)
    assert m["per_class"]["c"]["n"] == 0 and math.isnan(m["per_class"]["c"]["recall"])
    assert m["recall_macro"] == pytest.approx((0.5 + 1.0) / 2)  # over the classes present
    assert m["auroc_macro"] == pytest.approx(
        np.mean([roc_auc_score(labels == k, probs[:, k]) for k in (0, 1)])
    )


def test_bad_arguments_say_what_is_expected():
    probs, labels = _binary_case()
    with pytest.raises(ValueError, match="two classes need positive = 0 or 1"):
        classification_metrics(probs, labels, ("no", "yes"), majority_baseline=0.5)
    with pytest.raises(ValueError, match=r"shape \(n, 3\)"):
        classification_metrics(probs, labels, ("a", "b", "c"), majority_baseline=0.5)
    with pytest.raises(ValueError, match="expected positive=None"):
        classification_metrics(
            np.full((4, 3), 1 / 3), [0, 1, 2, 0], ("a", "b", "c"), positive=1, majority_baseline=0.5
        )


def test_summaries_show_what_applies():
    probs, labels = _binary_case()
    binary = summary_lines(
        classification_metrics(probs, labels, ("no", "yes"), positive=1, majority_baseline=0.5)
    )
    assert [line.split()[0] for line in binary] == ["test", "majority", "ROC", "sensitivity", "specificity"]
    rng = np.random.default_rng(0)
    p3 = rng.dirichlet(np.ones(3), 30)
    lines = "\n".join(
        summary_lines(
            classification_metrics(p3, rng.integers(0, 3, 30), ("a", "b", "c"), majority_baseline=0.4)
        )
    )
    assert "macro ROC AUC" in lines and "macro recall" in lines and "recall c" in lines
    assert "sensitivity" not in lines and "n/a" not in lines
