"""``tuning.tracking`` without a search: a finished report logged as an MLflow run into a local SQLite store and
read back with MLflow's client (the end-to-end search is in tests/test_search.py)."""

from __future__ import annotations

import json
import math

from mlflow.tracking import MlflowClient

from tests.helpers import search_settings
from tuning.tracking import artifact_files, log_result, numeric_leaves, prepare_tracking, run_name

CV_REPORT = {
    "kind": "cv",
    "metrics": {
        "pooled": {
            "accuracy": 0.86,
            "accuracy_ci95": [0.8, 0.9],
            "n": 253,
            "auroc": math.nan,
            "classes": ["no", "yes"],
        },
        "per_fold": {"accuracy": {"mean": 0.85, "sd": 0.03, "values": [0.8, 0.9]}},
    },
    "artifacts": {"predictions": "predictions.csv", "plots": ["roc.png", "missing.png"], "folds": ["fold-1"]},
}


def test_numeric_leaves_are_the_numbers_of_a_metrics_tree():
    assert numeric_leaves(CV_REPORT["metrics"]) == {
        "pooled/accuracy": 0.86,
        "pooled/accuracy_ci95/low": 0.8,
        "pooled/accuracy_ci95/high": 0.9,
        "pooled/n": 253.0,
        "per_fold/accuracy/mean": 0.85,
        "per_fold/accuracy/sd": 0.03,
    }  # NaN, text and plain lists are left out


def test_artifacts_are_the_files_the_report_names(tmp_path):
    for name in ("report.json", "predictions.csv", "roc.png"):
        (tmp_path / name).write_text("x")
    (tmp_path / "fold-1").mkdir()
    assert [p.name for p in artifact_files(CV_REPORT, tmp_path)] == [
        "report.json",
        "predictions.csv",
        "roc.png",
    ]


def test_run_names_say_the_fold_and_repeat(tmp_path):
    assert run_name("refit", tmp_path / "run" / "repeat-10" / "fold-2") == "refit repeat-10 fold-2"
    assert run_name("refit", tmp_path / "run") == "refit"


def test_a_cross_validation_report_is_logged_and_read_back(tmp_path):
    run = tmp_path / "run"
    s = search_settings("--space", "baseline_cnn", "--max-epochs", "4", "--grace-period", "2", "--mlflow", "--out", str(run), "--cv", "3")  # fmt: skip
    experiment_id = prepare_tracking(s)
    assert prepare_tracking(s) == experiment_id  # the same experiment when it exists
    run.mkdir(exist_ok=True)
    (run / "report.json").write_text(json.dumps(CV_REPORT))
    (run / "predictions.csv").write_text("path,label\n")
    run_id = log_result(s, CV_REPORT, run, kind="cross-validation")
    client = MlflowClient(s.mlflow)
    logged = client.get_run(run_id)
    assert logged.info.status == "FINISHED" and logged.info.run_name == "cross-validation"
    assert logged.info.experiment_id == experiment_id
    assert logged.data.metrics["pooled/accuracy"] == 0.86
    assert (
        logged.data.tags["mri_tune.kind"] == "cross-validation"
        and logged.data.tags["mri_tune.search_alg"] == "random"
    )
    assert {a.path for a in client.list_artifacts(run_id)} == {"report.json", "predictions.csv"}


def test_without_mlflow_nothing_is_logged(tmp_path):
    s = search_settings(
        "--space", "baseline_cnn", "--max-epochs", "4", "--grace-period", "2", "--out", str(tmp_path)
    )
    assert prepare_tracking(s) is None and log_result(s, CV_REPORT, tmp_path, kind="refit") is None
    assert list(tmp_path.iterdir()) == []
