"""Security: the dashboard stays on localhost unless asked, Ray's token authentication stays on, and weights or
checkpoint files that carry a malicious pickle are refused without running it."""

from __future__ import annotations

import ast
import os
import pickle
import re
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
import ray
import torch

from modules.networks import ResNet50Classifier
from modules.weights import WeightsError, load_resnet50_weights, resolve_weights
from tests.helpers import REPO, search_settings
from tuning import search
from tuning.ray_runtime import start_ray
from tuning.settings import SearchSettings


# ----------------------------------------------------------------------------- the dashboard and Ray's auth
@pytest.fixture
def fake_ray(monkeypatch):
    """``ray.init`` replaced by a recorder (no Ray starts); returns the list of its keyword arguments."""
    calls: list[dict] = []

    def init(*args, **kwargs):
        calls.append(kwargs)
        return SimpleNamespace(dashboard_url=f"{kwargs.get('dashboard_host')}:{kwargs.get('dashboard_port')}")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return calls


def settings(*argv: str) -> SearchSettings:
    return search_settings(*argv)


def test_dashboard_binds_to_localhost_by_default(fake_ray, capsys):
    start_ray(settings())
    (kwargs,) = fake_ray
    assert kwargs["dashboard_host"] == "127.0.0.1" and kwargs["include_dashboard"] is True
    out, err = capsys.readouterr()
    assert err == ""
    assert "Ray dashboard: http://127.0.0.1:8265" in out and "auth_token" in out
    assert "RAY_AUTH_MODE" not in os.environ  # never set by us: Ray's default (token auth) applies


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "::"])
def test_dashboard_on_another_interface_gets_a_loud_warning(fake_ray, capsys, host):
    start_ray(settings("--dashboard-host", host))
    assert fake_ray[0]["dashboard_host"] == host
    err = capsys.readouterr().err
    assert err.startswith(f"warning: the Ray dashboard will listen on {host}")
    for words in ("arbitrary code", "unauthenticated Ray dashboards", "ShadowRay", "token authentication on"):
        assert words in err


def test_no_warning_without_a_dashboard(fake_ray, capsys):
    start_ray(settings("--dashboard-host", "0.0.0.0", "--no-dashboard"))
    assert fake_ray[0]["include_dashboard"] is False
    assert capsys.readouterr().err == ""


def test_joining_a_cluster_passes_no_dashboard_settings(fake_ray, capsys):
    start_ray(settings("--address", "ray://head:10001"))
    assert fake_ray == [{"address": "ray://head:10001", "log_to_driver": False}]


@pytest.mark.parametrize("mode", ["disabled", "DISABLED", "off", "none", ""])
def test_warns_when_the_environment_turns_token_auth_off(fake_ray, capsys, monkeypatch, mode):
    # Ray disables token authentication for any explicitly set RAY_AUTH_MODE other than "token"
    monkeypatch.setenv("RAY_AUTH_MODE", mode)
    start_ray(settings())
    err = capsys.readouterr().err
    assert f"warning: RAY_AUTH_MODE={mode}: Ray's token authentication is off" in err
    assert os.environ["RAY_AUTH_MODE"] == mode  # reported, not changed behind the user's back


@pytest.mark.parametrize("mode", [None, "token", "TOKEN"])
def test_no_auth_warning_when_token_auth_is_on(fake_ray, capsys, monkeypatch, mode):
    if mode is not None:
        monkeypatch.setenv("RAY_AUTH_MODE", mode)
    start_ray(settings())
    assert "RAY_AUTH_MODE" not in capsys.readouterr().err


def test_no_code_of_ours_sets_ray_auth_mode():
    name = r"""["']RAY_AUTH_MODE["']"""
    setting = re.compile(
        rf"environ\[\s*{name}\s*\]\s*=(?!=)|setdefault\(\s*{name}|putenv\(\s*{name}|{name}\s*:"
    )
    assert setting.search('os.environ["RAY_AUTH_MODE"] = "disabled"')  # the pattern finds what it should
    for path in [*REPO.glob("tuning/*.py"), *REPO.glob("modules/*.py"), *REPO.glob("search_spaces/*.py")]:
        assert not setting.search(path.read_text()), f"{path} sets RAY_AUTH_MODE"


def test_every_torch_load_of_ours_is_weights_only():
    for path in [*REPO.glob("tuning/*.py"), *REPO.glob("modules/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "load"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "torch"
            ):
                flags = {k.arg: k.value for k in node.keywords}
                assert (
                    isinstance(flags.get("weights_only"), ast.Constant)
                    and flags["weights_only"].value is True
                ), f"{path}:{node.lineno}: torch.load without weights_only=True"


# ----------------------------------------------------------------------------- malicious pickles
class Exploit:
    """Unpickling this runs ``touch <marker>``: what a booby-trapped weights file does to torch.load."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def marker(tmp_path) -> Path:
    path = Path("/tmp") / f"pwned-{uuid.uuid4().hex}"
    yield path
    path.unlink(missing_ok=True)


def _evil_files(tmp_path: Path, marker: Path) -> dict[str, Path]:
    state = {"conv1.weight": torch.zeros(1), "fc.weight": Exploit(marker)}
    files = {
        "bare-object": (Exploit(marker), {}),
        "inside-state-dict": ({"state_dict": state}, {}),
        "legacy-format": (state, {"_use_new_zipfile_serialization": False}),
    }
    out = {}
    for name, (obj, kwargs) in files.items():
        out[name] = tmp_path / f"{name}.pth"
        torch.save(obj, out[name], **kwargs)
    out["raw-pickle"] = tmp_path / "raw-pickle.pth"
    out["raw-pickle"].write_bytes(pickle.dumps(Exploit(marker)))
    return out


def test_the_crafted_file_really_is_malicious(tmp_path, marker):
    # the control: an unsafe load runs the payload, so the refusals below are refusals of a real attack
    torch.load(_evil_files(tmp_path, marker)["inside-state-dict"], weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("kind", ["bare-object", "inside-state-dict", "legacy-format", "raw-pickle"])
@pytest.mark.parametrize("force_unsafe_env", [False, True], ids=["plain", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"])
def test_malicious_weights_are_refused_and_never_run(tmp_path, marker, monkeypatch, kind, force_unsafe_env):
    if force_unsafe_env:  # an environment asking torch to unpickle anything must not override our loader
        monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    path = _evil_files(tmp_path, marker)[kind]
    with pytest.raises(
        WeightsError, match=r"not a loadable PyTorch state_dict \(torch.load with weights_only"
    ):
        load_resnet50_weights(ResNet50Classifier(num_classes=2), path)
    with pytest.raises(WeightsError, match="weights_only=True failed"):
        resolve_weights(path)
    assert not marker.exists()


def test_malicious_checkpoint_is_refused_and_never_run(tmp_path, marker):
    checkpoint = pytest.importorskip("modules.checkpoint")
    path = _evil_files(tmp_path, marker)["inside-state-dict"]
    with pytest.raises(ValueError, match="weights_only=True"):
        checkpoint.read_checkpoint(path)
    assert not marker.exists()


def test_malicious_weights_on_the_command_lines(tmp_path, marker, small_set, capsys, monkeypatch):
    from tuning import train
    from tuning.cli import run_main

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray must not start")

    monkeypatch.setattr(ray, "init", no_ray)
    evil = str(_evil_files(tmp_path, marker)["inside-state-dict"])
    argv = ["--data", str(small_set), "--model", "resnet50", "--weights", evil, "--out", str(tmp_path / "t")]
    assert run_main(train.main, [*argv, "--max-epochs", "1", "--no-progress"]) == 2
    argv = [
        "--data",
        str(small_set),
        "--space",
        "resnet_stage2",
        "--weights",
        evil,
        "--out",
        str(tmp_path / "s"),
    ]
    assert run_main(search.main, [*argv, "--no-dashboard"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(line.startswith("error: weights file ") for line in err), err
    assert not marker.exists()
