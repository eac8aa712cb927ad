"""Bad values and space files at the command line of ``tuning.search``: one clear error, before Ray starts.

``tests/test_search_spaces.py`` checks ``SearchSettings`` itself; here the whole command runs through ``run_main``
with ``ray.init`` replaced by a trap, so a case that reached Ray would fail loudly instead of starting it.
"""

from __future__ import annotations

import json
import time

import pytest
import ray
import torch

from tests.helpers import scan, write_image
from tuning import search
from tuning.cli import run_main


class RayStarted(BaseException):
    """Raised by the trapped ``ray.init``; a BaseException so that ``run_main`` does not turn it into exit 2."""


@pytest.fixture(scope="module", autouse=True)
def warm_imports():
    import tuning.pipeline  # noqa: F401  (the first import of Ray Tune and Lightning takes seconds)


@pytest.fixture
def no_ray(monkeypatch):
    assert not ray.is_initialized()

    def trap(*args, **kwargs):
        raise RayStarted(f"ray.init called with {kwargs}")

    monkeypatch.setattr(ray, "init", trap)
    yield
    assert not ray.is_initialized()


def _space(tmp_path, content) -> str:
    path = tmp_path / "space.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


def run_refused(argv: list[str], capsys) -> str:
    """Run the search command; it must exit 2 with one ``error:`` line, fast, without starting Ray."""
    started = time.monotonic()
    code = run_main(search.main, argv)
    elapsed = time.monotonic() - started
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2, out + err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in out + err
    assert elapsed < 10, f"took {elapsed:.1f} s to refuse"
    return lines[0]


BASE = ["--space", "baseline_cnn", "--max-epochs", "4", "--grace-period", "2", "--no-dashboard"]

BAD_VALUES = {
    "zero-samples": (["--num-samples", "0"], "--num-samples must be >= 1, got 0"),
    "negative-samples": (["--num-samples", "-3"], "--num-samples must be >= 1, got -3"),
    "zero-epochs": (["--max-epochs", "0", "--grace-period", "1"], "--max-epochs must be >= 1, got 0"),
    "negative-epochs": (["--max-epochs", "-2"], "--max-epochs must be >= 1, got -2"),
    "grace-above-max": (["--grace-period", "5"], "--grace-period must be within 1..--max-epochs (4), got 5"),
    "zero-grace": (["--grace-period", "0"], "--grace-period must be within"),
    "reduction-factor-1": (["--reduction-factor", "1"], "--reduction-factor must be >= 2"),
    "zero-cpus": (["--cpus-per-trial", "0"], "need --cpus-per-trial > 0"),
    "negative-gpus": (["--gpus-per-trial", "-1"], "--gpus-per-trial >= 0"),
    "too-many-gpus": (
        ["--gpus-per-trial", str(torch.cuda.device_count() + 1)],
        f"this machine has {torch.cuda.device_count()} GPU(s)",
    ),
    "negative-failures": (["--max-failures", "-1"], "--max-failures must be >= 0"),
    "unknown-space": (
        ["--space", "resnet_stage3"],
        "valid spaces: baseline_cnn, resnet_stage1, resnet_stage2",
    ),
    "bad-set": (["--set", "lr=fast"], "--set 'lr=fast': lr must be of type float"),
    "unknown-set": (["--set", "learning_rate=0.1"], "expected KEY=VALUE with KEY one of"),
    "early-rung": (["--space", "resnet_stage2", "--max-epochs", "8", "--grace-period", "2"], "first rung"),
    "tpe-startup-0": (["--search-alg", "tpe", "--tpe-startup", "0"], "--tpe-startup must be >= 1, got 0"),
    "empty-mlflow-uri": (["--mlflow", " "], "--mlflow needs a tracking URI, or no value at all"),
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_bad_value_is_refused_before_ray(no_ray, tmp_path, capsys, case):
    extra, message = BAD_VALUES[case]
    run = tmp_path / "run"
    line = run_refused([*BASE, "--out", str(run), *extra], capsys)
    assert message in line
    assert not run.exists()


BAD_SPACES = {
    "syntax-error": ('{"lr": {"loguniform": [1e-4, 1e-2]}', "invalid JSON at line 1, column"),
    "not-an-object": ("[1, 2]", "expected a JSON object"),
    "low-above-high": ({"lr": {"uniform": [0.1, 0.01]}}, "low < high, got low=0.1, high=0.01"),
    "low-equals-high": ({"lr": {"loguniform": [0.01, 0.01]}}, "low < high"),
    "loguniform-zero": ({"lr": {"loguniform": [0, 0.1]}}, "loguniform needs bounds > 0, got low=0"),
    "loguniform-negative": ({"lr": {"loguniform": [-1e-3, 0.1]}}, "loguniform needs bounds > 0"),
    "unknown-sampler": ({"lr": {"normal": [0, 1]}}, "unknown sampler"),
    "unknown-hyperparameter": ({"learning_rate": 0.1}, "unknown hyperparameter"),
    "bad-value-at-bound": ({"model": "cnn", "dropout": {"uniform": [0.2, 1.5]}}, "dropout"),
}


@pytest.mark.parametrize("case", sorted(BAD_SPACES))
def test_bad_space_file_is_refused_before_ray(no_ray, tmp_path, capsys, case):
    content, message = BAD_SPACES[case]
    argv = [*BASE, "--space", _space(tmp_path, content), "--out", str(tmp_path / "run")]
    line = run_refused(argv, capsys)
    assert message in line
    assert "space" in line or "lr" in line or "dropout" in line


def test_missing_space_file_is_refused_before_ray(no_ray, tmp_path, capsys):
    line = run_refused(
        [*BASE, "--space", str(tmp_path / "nope.json"), "--out", str(tmp_path / "run")], capsys
    )
    assert "cannot read space file" in line


def test_bad_data_is_refused_before_ray(no_ray, tmp_path, capsys):
    for i in range(3):
        write_image(tmp_path / "set" / "yes" / f"y{i}.png", scan(i))
    line = run_refused([*BASE, "--data", str(tmp_path / "set"), "--out", str(tmp_path / "run")], capsys)
    assert "found only one class folder (yes/, 3 file(s))" in line
    assert not (tmp_path / "run" / "search.json").exists()


def test_an_mlflow_file_store_is_refused_before_ray(no_ray, tmp_path, capsys, monkeypatch):
    """MLflow 3 refuses plain file stores unless told otherwise; the search says so in one line and what to
    use instead, before the data is read or Ray starts."""
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    store = tmp_path / "mlruns"
    line = run_refused([*BASE, "--mlflow", store.as_uri(), "--out", str(tmp_path / "run")], capsys)
    assert f"--mlflow {store.as_uri()}: the tracking store failed" in line
    assert "use an SQLite store (sqlite:///PATH/mlflow.db, or --mlflow alone" in line
    assert not (tmp_path / "run").exists()


def test_mlflow_alone_means_a_store_in_the_run_folder(tmp_path):
    from tests.helpers import search_settings

    s = search_settings(*BASE, "--mlflow", "--out", str(tmp_path / "run"))
    assert s.mlflow == f"sqlite:///{(tmp_path / 'run').resolve()}/mlflow.db"
    assert s.mlflow_experiment == "run"
    named = search_settings(
        *BASE, "--mlflow", "http://127.0.0.1:5000", "--mlflow-experiment", "mri", "--out", "x"
    )
    assert (named.mlflow, named.mlflow_experiment) == ("http://127.0.0.1:5000", "mri")
    assert search_settings(*BASE).mlflow is None


def test_resume_of_a_folder_without_a_search_is_refused(no_ray, tmp_path, capsys):
    line = run_refused(["--resume", str(tmp_path)], capsys)
    assert "no search.json there" in line


def test_existing_run_folder_is_refused(no_ray, tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("mine")
    line = run_refused([*BASE, "--out", str(tmp_path / "run")], capsys)
    assert "exists and is not empty" in line
    assert (tmp_path / "run" / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--num-samples", "many"], "argument --num-samples: invalid int value: 'many'"),
        (["--metric", "val/acc"], "argument --metric: invalid choice: 'val/acc'"),
    ],
)
def test_unparsable_value_is_argparse_usage_error(no_ray, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        run_main(search.main, argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0], err
    assert "Traceback" not in err
