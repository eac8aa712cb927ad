"""``SearchSettings`` from the parsed flags of ``python -m tuning.search``, and to and from ``search.json``."""

from __future__ import annotations

import json
import shlex
from dataclasses import asdict, fields
from datetime import datetime
from pathlib import Path

from tuning.config import FIELD_TYPES
from tuning.settings import LOCAL_MLFLOW, SearchSettings


def parse_set(items: list[str]) -> dict:
    """``--set KEY=VALUE`` items as typed TrainConfig values."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in FIELD_TYPES:
            raise ValueError(
                f"--set {item!r}: expected KEY=VALUE with KEY one of {', '.join(sorted(FIELD_TYPES))}"
            )
        kind = FIELD_TYPES[key]
        parse = {"int": int, "float": float, "bool": lambda v: v.lower() in ("1", "true", "yes")}.get(
            kind, str
        )
        try:
            out[key] = parse(value)
        except ValueError:
            raise ValueError(f"--set {item!r}: {key} must be of type {kind}") from None
    return out


def local_mlflow_uri(run_dir: str) -> str:
    """The tracking URI of ``--mlflow`` given alone: an SQLite store in the run folder, by absolute path."""
    return "sqlite:///" + str((Path(run_dir) / "mlflow.db").resolve())


def settings_from_flags(values: dict, model: dict, set_items: list[str], argv: list[str]) -> SearchSettings:
    """Settings from the parsed flags: ``values`` (SearchSettings fields), ``model`` (the MODEL_FLAGS
    TrainConfig fields; ``resize`` None: 8/7 of ``image_size``), ``--set`` items and the command line."""
    fixed = parse_set(set_items)
    base = {
        **model,
        "resize": model["resize"] or round(model["image_size"] * 8 / 7),
        "threads": max(1, int(values["cpus_per_trial"])),
        **fixed,
    }
    space = values["space"]
    if not values["run_dir"]:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        name = Path(space).stem if space.endswith(".json") else space
        values = {**values, "run_dir": str(Path("results") / f"{name}-{stamp}")}
    if values.get("mlflow"):
        values = {
            **values,
            "mlflow": local_mlflow_uri(values["run_dir"])
            if values["mlflow"] == LOCAL_MLFLOW
            else values["mlflow"],
            "mlflow_experiment": values["mlflow_experiment"] or Path(values["run_dir"]).name,
        }
    return SearchSettings(
        **values, base=base, overrides=sorted(fixed), command="python -m tuning.search " + shlex.join(argv)
    )


def save_settings(s: SearchSettings, fingerprint: str) -> dict:
    """The content of ``search.json``: the settings and the fingerprint of the data they ran on."""
    return {**asdict(s), "data_fingerprint": fingerprint}


def load_settings(run_dir: str | Path) -> SearchSettings:
    """The settings of an earlier search, from its ``search.json``, with ``run_dir`` set to where it is now."""
    path = Path(run_dir) / "search.json"
    if not path.is_file():
        raise ValueError(
            f"--resume {run_dir}: no search.json there; expected the folder of an earlier search"
        )
    raw = json.loads(path.read_text())
    known = {f.name for f in fields(SearchSettings)}
    return SearchSettings(**{**{k: v for k, v in raw.items() if k in known}, "run_dir": str(Path(run_dir))})
