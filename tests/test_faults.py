"""Injected faults: nothing finished is lost.

Quick: a failure in the middle of an atomic write leaves the old file and no temporary file.
Slow (``make test-slow``): a trial's worker killed with SIGKILL (retried through ``--max-failures``), the driver
killed with SIGKILL and then ``--resume``, and one node of a two-node local cluster removed mid-search.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from modules import files
from modules.phantom import make_phantom
from tests.helpers import REPO, subprocess_env

# ----------------------------------------------------------------------------- atomic writes (quick)
OLD = {"kind": "search", "metrics": {"test": {"accuracy": 0.9}}}


class HalfWriter:
    """A file object that writes the first half of what it is given, then fails like a full disk."""

    def __init__(self, fh) -> None:
        self.fh = fh

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.fh.close()

    def write(self, data: bytes) -> int:
        self.fh.write(data[: len(data) // 2])
        self.fh.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    def flush(self) -> None:
        self.fh.flush()

    def fileno(self) -> int:
        return self.fh.fileno()


def _fail_mid_write(monkeypatch):
    real = os.fdopen
    monkeypatch.setattr(files.os, "fdopen", lambda fd, mode: HalfWriter(real(fd, mode)))


def _fail_fsync(monkeypatch):
    def fsync(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(files.os, "fsync", fsync)


def _interrupt_before_rename(monkeypatch):
    def replace(src, dst):
        raise KeyboardInterrupt  # Ctrl+C between the complete temporary file and the rename

    monkeypatch.setattr(files.os, "replace", replace)


@pytest.mark.parametrize(
    ("inject", "error"),
    [(_fail_mid_write, OSError), (_fail_fsync, OSError), (_interrupt_before_rename, KeyboardInterrupt)],
    ids=["disk-full-mid-write", "fsync-fails", "interrupt-before-rename"],
)
def test_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch, inject, error):
    target = tmp_path / "report.json"
    files.atomic_write_json(target, OLD)
    before = target.read_bytes()
    inject(monkeypatch)
    with pytest.raises(error):
        files.atomic_write_json(
            target, {"kind": "search", "metrics": {"test": {"accuracy": 0.1}}, "pad": "x" * 9999}
        )
    monkeypatch.undo()
    assert target.read_bytes() == before
    assert json.loads(target.read_text()) == OLD
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]  # no .report.json.*.tmp left


def test_failed_first_write_leaves_nothing(tmp_path, monkeypatch):
    _fail_mid_write(monkeypatch)
    with pytest.raises(OSError, match="No space left"):
        files.atomic_write_text(tmp_path / "split.csv", "path,sha256\n" * 1000)
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_the_manifest_of_a_data_run_is_written_atomically(tmp_path, small_set, monkeypatch):
    from tuning import data as data_cli

    target = tmp_path / "split.csv"
    target.write_text("the previous manifest\n")
    _fail_mid_write(monkeypatch)
    with pytest.raises(OSError):
        data_cli.main([str(small_set), "--write-split", str(target)])
    monkeypatch.undo()
    assert target.read_text() == "the previous manifest\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set", "split.csv"]


# ----------------------------------------------------------------------------- helpers for the slow tests
TINY = [
    "--batch-size",
    "8",
    "--no-dashboard",
    "--cpus-per-trial",
    "1",
    "--image-size",
    "96",
    "--resize",
    "104",
]


@pytest.fixture(scope="module")
def slow_phantom(tmp_path_factory):
    """Trials of a few seconds each on 2 cores, so that a fault can land in the middle of one."""
    return make_phantom(tmp_path_factory.mktemp("phantom"), n_per_class=30, size=96, seed=6)


def search_args(
    data: Path, run: Path, *, samples: int, epochs: int, extra: tuple[str, ...] = ()
) -> list[str]:
    return [
        "--space",
        "baseline_cnn",
        "--data",
        str(data),
        "--num-samples",
        str(samples),
        "--max-epochs",
        str(epochs),
        "--grace-period",
        str(epochs),
        "--out",
        str(run),
        *TINY,
        *extra,
    ]


def descendants(root: int) -> list[int]:
    """PIDs of every process below ``root`` (read from /proc): only processes this test started."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        for pid in children.get(todo.pop(), []):
            out.append(pid)
            todo.append(pid)
    return out


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def live_results(session_dir: str) -> dict[str, list[dict]]:
    """Trial folder -> the results the driver has logged so far (its staging copy, updated after each epoch)."""
    out = {}
    for path in Path(session_dir).glob("artifacts/*/*/driver_artifacts/*/result.json"):
        lines = path.read_text().splitlines()
        out[path.parent.name] = [json.loads(line) for line in lines if line.strip().endswith("}")]
    return out


def trial_states(experiment: Path) -> dict[str, dict]:
    """Trial folder -> {status, num_failures}, from Tune's latest saved experiment state (what resume reads)."""
    states = sorted(experiment.glob("experiment_state-*.json"))
    if not states:
        return {}
    try:
        raw = json.loads(states[-1].read_text())
    except (OSError, json.JSONDecodeError):  # being replaced right now
        return {}
    out = {}
    for trial_json, meta_json in raw["trial_data"]:
        trial, meta = json.loads(trial_json), json.loads(meta_json)
        out[trial["relative_logdir"]] = {"status": trial["status"], "num_failures": meta["num_failures"]}
    return out


class Injector(threading.Thread):
    """Polls ``ready()`` every 0.2 s; when it returns something, calls ``act(it)`` once and records it."""

    def __init__(
        self, ready: Callable[[], object], act: Callable[[object], None], timeout: float = 300
    ) -> None:
        super().__init__(daemon=True)
        self.ready, self.act, self.timeout = ready, act, timeout
        self.fired: object = None
        self.error: BaseException | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + self.timeout
        try:
            while not self.stop.is_set() and time.monotonic() < deadline:
                found = self.ready()
                if found:
                    self.act(found)
                    self.fired = found
                    return
                time.sleep(0.2)
        except BaseException as exc:  # reported by the test, not lost in the thread
            self.error = exc


# ----------------------------------------------------------------------------- slow: a trial's worker dies
@pytest.mark.slow
def test_sigkilled_trial_worker_is_retried_and_the_search_completes(slow_phantom, tmp_path):
    import ray

    from tuning import search

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        session = ray._private.worker._global_node.get_session_dir_path()

        def trial_worker_mid_trial():
            # a trial that has reported its first epoch of 3, and the actor process running it
            if not any(len(r) == 1 for r in live_results(session).values()):
                return None
            actors = [p for p in descendants(os.getpid()) if cmdline(p).startswith("ray::ImplicitFunc")]
            return actors or None

        def kill(pids):
            for pid in pids:
                os.kill(pid, signal.SIGKILL)

        injector = Injector(trial_worker_mid_trial, kill)
        injector.start()
        run = tmp_path / "run"
        args = search_args(slow_phantom, run, samples=2, epochs=3, extra=("--max-concurrent", "1"))
        code = search.main([*args, "--max-failures", "2"])
        injector.stop.set()
        injector.join()
    finally:
        ray.shutdown()
    assert injector.error is None, injector.error
    assert injector.fired, "no trial worker was found running to kill"
    assert code == 0
    states = trial_states(run / "ray" / "tune")
    assert [s["status"] for s in states.values()] == ["TERMINATED", "TERMINATED"]
    assert sum(s["num_failures"] for s in states.values()) >= 1, states  # the killed attempt, then a retry
    report = json.loads((run / "report.json").read_text())
    assert report["search"]["trials"] == {"total": 2, "terminated": 2, "error": 0, "stopped_early": 0}


# ----------------------------------------------------------------------------- slow: the driver dies
SAMPLES = 10


@pytest.mark.slow
def test_sigkilled_driver_then_resume_loses_nothing_finished(slow_phantom, tmp_path):
    """Trials that Tune's saved experiment state lists as finished are kept as they are; the others (running,
    pending, or finished within the last save period, about 10 s) are run again from epoch 0, since trials
    keep no checkpoints."""
    run = tmp_path / "run"
    experiment = run / "ray" / "tune"
    # enough trials, one at a time, and Tune's state saved every second, so that the kill lands mid-search
    # however fast the machine is
    args = search_args(slow_phantom, run, samples=SAMPLES, epochs=3, extra=("--max-concurrent", "1"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "tuning.search", *args],
        cwd=REPO,
        env={**subprocess_env(), "TUNE_GLOBAL_CHECKPOINT_S": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    ours: dict[int, str] = {}  # pid -> command line, of the processes the driver started
    try:
        deadline = time.monotonic() + 300
        finished: dict[str, str] = {}
        while time.monotonic() < deadline and proc.poll() is None:
            ours.update({p: cmdline(p) for p in descendants(proc.pid)})
            states = trial_states(experiment)
            done = [name for name, s in states.items() if s["status"] == "TERMINATED"]
            if done and len(done) < SAMPLES:
                finished = {name: (experiment / name / "result.json").read_text() for name in done}
                break
            time.sleep(0.3)
        assert proc.poll() is None, "the search ended before the driver could be killed"
        assert finished, "no trial finished in time"
        ours.update({p: cmdline(p) for p in descendants(proc.pid)})
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        _reap(proc, ours)
    assert not (run / "report.json").exists()

    resumed = subprocess.run(
        [sys.executable, "-m", "tuning.search", "--resume", str(run)],
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "finished trials are kept, unfinished ones start again" in resumed.stdout
    for name, text in finished.items():
        assert (experiment / name / "result.json").read_text() == text, f"finished trial {name} was run again"
    states = trial_states(experiment)
    assert len(states) == SAMPLES and all(s["status"] == "TERMINATED" for s in states.values()), states
    report = json.loads((run / "report.json").read_text())
    assert report["search"]["trials"]["terminated"] == SAMPLES


def _reap(proc: subprocess.Popen, ours: dict[int, str]) -> None:
    """Stop the killed driver's Ray processes (only those it started) that outlive it: Ray stops its GCS, raylet
    and workers, but its dashboard agent and runtime-env agent linger."""
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=30)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(alive(p) for p in ours):
        time.sleep(0.5)
    for pid, command in ours.items():
        if alive(pid) and cmdline(pid) == command:  # the same process, not a reused PID
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# ----------------------------------------------------------------------------- slow: a node dies
@pytest.mark.slow
def test_search_completes_when_a_node_of_a_two_node_cluster_dies(slow_phantom, tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    from tuning import search

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    worker = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()  # both nodes registered before the search places its trials
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        session = ray._private.worker._global_node.get_session_dir_path()

        def trial_running_on_the_worker():
            for results in live_results(session).values():
                if len(results) == 1 and results[0].get("node_id") == worker.node_id:
                    return worker
            return None

        injector = Injector(
            trial_running_on_the_worker, lambda node: cluster.remove_node(node, allow_graceful=False)
        )
        injector.start()
        run = tmp_path / "cluster"
        args = search_args(slow_phantom, run, samples=4, epochs=3, extra=("--address", cluster.address))
        code = search.main([*args, "--max-failures", "3"])
        injector.stop.set()
        injector.join()
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert injector.error is None, injector.error
    assert injector.fired, "no trial was seen running on the second node"
    assert code == 0
    states = trial_states(run / "ray" / "tune")
    assert len(states) == 4 and all(s["status"] == "TERMINATED" for s in states.values()), states
    assert sum(s["num_failures"] for s in states.values()) >= 1, states
    report = json.loads((run / "report.json").read_text())
    assert report["search"]["trials"]["terminated"] == 4


def test_disk_full_during_a_command_is_one_error_line(tmp_path, monkeypatch, capsys):
    from modules import files
    from tuning import data as data_cli
    from tuning.cli import run_main

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files, "atomic_write_bytes", full)
    monkeypatch.setattr(data_cli, "atomic_write_text", lambda path, text: full())
    from tests.helpers import scan, write_image

    for i in range(6):
        write_image(tmp_path / "d" / "yes" / f"y{i}.png", scan(300 + i, mass=True))
        write_image(tmp_path / "d" / "no" / f"n{i}.png", scan(400 + i))
    code = run_main(data_cli.main, [str(tmp_path / "d"), "--write-split", str(tmp_path / "split.csv")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err[-1] == "error: No space left on device" and not any("Traceback" in line for line in err)
