"""Experiment tracking in MLflow (``--mlflow URI``): every trial through Ray's ``MLflowLoggerCallback``
(its parameters, and its metrics after every epoch), and each finished result (a refit's test metrics with
report.json, report.md, the plots and model.pt; a cross-validation's pooled report) as a run of its own, in one
MLflow experiment per search.

``--mlflow`` given alone means an SQLite store in the run folder (``mlflow.db``); an SQLite store keeps the
artifacts of an experiment this tool creates in ``mlartifacts/`` beside the database. MLflow 3 refuses plain
``file:`` stores unless ``MLFLOW_ALLOW_FILE_STORE=true`` is set; that refusal, a store that cannot be reached,
and any other failure of the store surface as one error line before Ray starts.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from tuning.provenance import code_revision
from tuning.settings import LOCAL_MLFLOW, SearchSettings
from tuning.settings_io import local_mlflow_uri

KIND_TAG = "mri_tune.kind"  # trial, refit, cross-validation, repeats
BATCH = 100
FILE_STORE_HINT = (
    "; use an SQLite store (sqlite:///PATH/mlflow.db, or --mlflow alone for one in the run folder), or set "
    "MLFLOW_ALLOW_FILE_STORE=true to keep a file store"
)


def tracking_uri(s: SearchSettings) -> str | None:
    if s.mlflow == LOCAL_MLFLOW:
        return local_mlflow_uri(s.run_dir)
    return s.mlflow


def experiment_name(s: SearchSettings) -> str:
    return s.mlflow_experiment or Path(s.run_dir).name


def artifact_location(uri: str) -> str | None:
    """Where a new experiment keeps its artifacts: ``mlartifacts/`` beside an SQLite store's database file;
    the store's own default elsewhere (a tracking server decides for itself)."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()


def prepare_tracking(s: SearchSettings) -> str | None:
    """Reach the store and get or create the search's experiment (before Ray starts, so that a bad URI is one
    error line, not a failure after the trials); returns its id, or None without ``--mlflow``."""
    uri = tracking_uri(s)
    if uri is None:
        return None
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    name = experiment_name(s)
    try:
        client = _client(uri)
        found = client.get_experiment_by_name(name)
        return found.experiment_id if found else client.create_experiment(name, artifact_location(uri))
    except Exception as exc:  # MlflowException, a driver error, a refused connection: all "the store failed"
        hint = FILE_STORE_HINT if "MLFLOW_ALLOW_FILE_STORE" in str(exc) else ""
        raise ValueError(
            f"--mlflow {uri}: the tracking store failed ({_first_sentence(exc)}){hint}"
        ) from None


def trial_callbacks(s: SearchSettings) -> list:
    """Ray Tune callbacks that log every trial to MLflow: its config as parameters, each epoch's result as
    metrics at that step; none without ``--mlflow``."""
    uri = tracking_uri(s)
    if uri is None:
        return []
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    return [
        MLflowLoggerCallback(tracking_uri=uri, experiment_name=experiment_name(s), tags=_tags(s, "trial"))
    ]


def log_result(s: SearchSettings, report: dict, folder: Path, *, kind: str) -> str | None:
    """Log a finished result as one MLflow run: its config as parameters, its metrics (test, pooled, ...) as
    metrics, report.json, report.md and every file its artifacts name; returns the run id (None without
    ``--mlflow``)."""
    uri = tracking_uri(s)
    if uri is None:
        return None
    from mlflow.entities import Metric, Param

    client = _client(uri)
    run_id = client.create_run(
        prepare_tracking(s), run_name=run_name(kind, folder), tags=_tags(s, kind)
    ).info.run_id
    params = [Param(str(k), str(v)) for k, v in (report.get("config") or {}).items()]
    now = int(time.time() * 1000)
    metrics = [Metric(k, v, now, 0) for k, v in numeric_leaves(report.get("metrics") or {}).items()]
    for start in range(0, max(len(params), len(metrics)), BATCH):  # MLflow takes at most 100 params a batch
        client.log_batch(run_id, metrics=metrics[start : start + BATCH], params=params[start : start + BATCH])
    for path in artifact_files(report, folder):
        inside = path.parent.relative_to(folder).as_posix()
        client.log_artifact(run_id, str(path), artifact_path=None if inside == "." else inside)
    client.set_terminated(run_id, "FINISHED")
    return run_id


def numeric_leaves(tree: dict, prefix: str = "") -> dict[str, float]:
    """Every number of a nested metrics dict, keyed by its path (``test/accuracy``); a 95% interval
    ``[low, high]`` becomes ``..._ci95/low`` and ``/high``; NaN, text and other lists are left out."""
    out: dict[str, float] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out |= numeric_leaves(value, path + "/")
        elif _is_number(value):
            out[path] = float(value)
        elif str(key).endswith("ci95") and isinstance(value, list | tuple) and len(value) == 2:
            out |= {
                f"{path}/{end}": float(v)
                for end, v in zip(("low", "high"), value, strict=True)
                if _is_number(v)
            }
    return out


def artifact_files(report: dict, folder: Path) -> list[Path]:
    """report.json, report.md and the files (not folders) that the report's ``artifacts`` name, in ``folder``."""
    names = ["report.json", "report.md"]
    for value in (report.get("artifacts") or {}).values():
        names += [value] if isinstance(value, str) else [v for v in value or [] if isinstance(v, str)]
    paths = [folder / n for n in dict.fromkeys(names)]
    return [p for p in paths if p.is_file()]


def run_name(kind: str, folder: Path) -> str:
    """``refit``, ``cross-validation`` ...: with the fold and repeat the folder belongs to, when it does."""
    parts = [p for p in Path(folder).parts[-2:] if p.startswith(("fold-", "repeat-"))]
    return " ".join([kind, *parts])


def _is_number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _tags(s: SearchSettings, kind: str) -> dict[str, str]:
    return {
        KIND_TAG: kind,
        "mri_tune.run_dir": str(Path(s.run_dir).resolve()),
        "mri_tune.space": s.space,
        "mri_tune.search_alg": s.search_alg,
        "mri_tune.code": code_revision(),
        "mri_tune.command": s.command,
    }


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _first_sentence(exc: Exception) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text.split(". ")[0][:300]
