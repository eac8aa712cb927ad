"""Slow search tests: resume after an interrupt, and a two-node local cluster. Run with `make test-slow`."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from modules.phantom import make_phantom
from tests.helpers import REPO, subprocess_env
from tests.helpers import TINY_SEARCH as TINY

pytestmark = pytest.mark.slow


def _finished_trials(run: Path, epochs: int) -> dict[str, str]:
    """Trial folder -> its result.json text, for trials that reported all their epochs."""
    out = {}
    for result in (run / "ray" / "tune").glob("train_trial_*/result.json"):
        text = result.read_text()
        if len(text.splitlines()) >= epochs:
            out[result.parent.name] = text
    return out


def test_sigint_then_resume_keeps_finished_trials(search_phantom, tmp_path):
    run = tmp_path / "run"
    # trials of a few seconds each, one at a time, so that the interrupt lands while some are unfinished
    slower = [*TINY, "--image-size", "128", "--resize", "136"]
    data = make_phantom(tmp_path / "bigger", n_per_class=40, size=128, seed=6)
    args = [
        "--space",
        "baseline_cnn",
        "--data",
        str(data),
        "--num-samples",
        "6",
        "--max-epochs",
        "3",
        "--grace-period",
        "3",
        "--max-concurrent",
        "1",
        "--out",
        str(run),
        *slower,
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tuning.search", *args],
        cwd=REPO,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and len(_finished_trials(run, 3)) < 1 and proc.poll() is None:
        time.sleep(0.5)
    assert proc.poll() is None, "the search ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0, out
    assert not (run / "report.json").exists()
    before = _finished_trials(run, 3)
    assert len(before) >= 1

    resumed = subprocess.run(
        [sys.executable, "-m", "tuning.search", "--resume", str(run)],
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    after = _finished_trials(run, 3)
    for name, text in before.items():
        assert after[name] == text, f"finished trial {name} was run again"
    report = json.loads((run / "report.json").read_text())
    assert report["search"]["trials"]["total"] == 6
    assert report["search"]["trials"]["terminated"] == 6


def test_two_node_cluster_places_trials_on_both_nodes(search_phantom, tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()  # both nodes registered before the search places its trials
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        from tuning import search

        run = tmp_path / "cluster"
        args = [
            "--space",
            "baseline_cnn",
            "--data",
            str(search_phantom),
            "--num-samples",
            "4",
            "--max-epochs",
            "2",
            "--grace-period",
            "2",
            "--address",
            cluster.address,
            "--out",
            str(run),
            *TINY,
            # trials long enough (seconds, not a fraction of one) that the second node's actor is up before
            # the first node's reused actor has run them all: at 32 px a trial took 0.3 s, and on an idle
            # machine every trial could land on one node
            "--image-size",
            "128",
            "--resize",
            "144",
        ]
        assert search.main(args) == 0
        import csv

        nodes = {row["node_id"] for row in csv.DictReader((run / "trials.csv").open())}
        assert len(nodes) == 2, nodes
    finally:
        ray.shutdown()
        cluster.shutdown()
