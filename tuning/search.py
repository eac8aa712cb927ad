"""``python -m tuning.search --space NAME``: tune with Ray Tune and ASHA, refit the best config, test it once.

The run folder (``results/<space>-<timestamp>/`` by default) receives ``search.json`` (the settings, for
``--resume``), Ray's experiment state under ``ray/``, then ``trials.csv``, ``trial_curves.png``, the refit's
``model.pt``, ``metrics.csv`` and plots, ``split.csv``, ``report.json`` and ``report.md`` (with ``--mlflow``
alone also ``mlflow.db`` and ``mlartifacts/``, the MLflow store).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from tuning.cli import run_main
from tuning.config import TrainConfig
from tuning.flags import add_flags, flag_fields, values_of
from tuning.pipeline import run_search
from tuning.settings import MODEL_FLAGS, SearchSettings
from tuning.settings_io import load_settings, settings_from_flags

MODEL_GROUP = "model (values the space does not sample)"
DATA_FLAGS = [
    "data",
    "positive_class",
    "split_seed",
    "strict",
    "must_link",
    "groups",
    "slice_axis",
    "slices",
    "split",
    "cv",
    "repeats",
    "final",
]


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tuning.search",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    groups: dict = {}
    add_flags(p, SearchSettings, groups=groups, only=DATA_FLAGS)
    add_flags(
        p,
        TrainConfig,
        groups=groups,
        only=MODEL_FLAGS,
        group=MODEL_GROUP,
        defaults={"resize": None},
        default_texts={"resize": "8/7 of --image-size"},
    )
    groups[MODEL_GROUP].add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other fixed hyperparameter, e.g. --set patience=3 (repeatable); it also replaces a constant "
        "of the space (e.g. --set crop=none with resnet_stage2), never a sampled entry",
    )
    rest = [f.name for f in flag_fields(SearchSettings) if f.name not in DATA_FLAGS]
    add_flags(
        p, SearchSettings, groups=groups, only=rest, defaults={"address": os.environ.get("RAY_ADDRESS")}
    )
    groups["output"].add_argument(
        "--resume",
        metavar="RUN_DIR",
        default=None,
        help="finish an interrupted search in RUN_DIR, then refit",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = get_args_parser().parse_args(argv)
    if args.resume:
        settings = load_settings(args.resume)
    else:
        settings = settings_from_flags(
            values_of(args, SearchSettings), values_of(args, TrainConfig, only=MODEL_FLAGS), args.set, argv
        )
        run_dir = Path(settings.run_dir)
        if run_dir.exists() and any(run_dir.iterdir()):
            raise ValueError(
                f"run folder {run_dir} exists and is not empty; choose another --out, or --resume it"
            )
    started = time.perf_counter()
    report = run_search(settings, resume=bool(args.resume))
    print(f"total time {time.perf_counter() - started:.0f} s")
    return 0 if report is not None else 1


if __name__ == "__main__":
    sys.exit(run_main(main))
