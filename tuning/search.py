"""``python -m tuning.search --space NAME``: tune with Ray Tune and ASHA, refit the best config, test it once.

The run folder (``results/<space>-<timestamp>/`` by default) receives ``search.json`` (the settings, for
``--resume``), Ray's experiment state under ``ray/``, then ``trials.csv``, ``trial_curves.png``, the refit's
``model.pt``, ``metrics.csv`` and plots, ``split.csv``, ``report.json`` and ``report.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from dataclasses import dataclass, field, fields
from datetime import datetime
from pathlib import Path

from search_spaces import SpaceError, bounds, get_spec, validate_spec
from tuning.cli import add_positive_class_flag, run_main, warn
from tuning.engine import TrainConfig

LOCALHOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass
class SearchSettings:
    """Everything that defines a search; saved as search.json so that ``--resume`` repeats it exactly."""

    space: str = "resnet_stage2"
    data: str | None = None  # None: the built-in phantom set
    positive_class: str | None = None  # two-class sets: None means "yes"
    split_seed: int = 0
    split: str = "grouped"  # "grouped" (leak-free) or "random" (by file: leaky, for contrast only)
    ensemble: int = 1  # refit the N best trials and average their class probabilities
    cv: int = 0  # K >= 2: nested grouped K-fold cross-validation (a search per fold); 0: one split
    strict: bool = False
    num_samples: int = 8
    max_epochs: int = 8
    grace_period: int = 4
    reduction_factor: int = 2
    metric: str = "val/loss"
    seed: int = 0
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int = 0  # 0: as many as the resources allow
    max_failures: int = 1
    allow_early_rung: bool = False
    address: str | None = None
    dashboard_host: str = "127.0.0.1"
    dashboard_port: int = 8265
    dashboard: bool = True
    storage: str | None = None  # None: <run folder>/ray
    cache: bool = True  # share the frozen backbone's outputs between trials (resnet50 spaces)
    cache_views: int = 4  # augmented views per training image in the cache
    cache_max_gb: float = 4.0
    cache_precision: str = "bf16"  # the cache build's arithmetic: "bf16" autocast (2x faster) or "32"
    run_dir: str = ""
    base: dict = field(default_factory=dict)  # TrainConfig values the space does not sample
    overrides: list = field(default_factory=list)  # keys given with --set: they replace a space's constants
    command: str = ""

    @property
    def rank(self) -> tuple[str, str]:
        from tuning.trial import RANK_METRICS

        return RANK_METRICS[self.metric]


# ----------------------------------------------------------------------------- validation (before Ray)
FIELD_TYPES = {f.name: f.type for f in fields(TrainConfig)}


def validate(settings: SearchSettings, *, gpus_available: int | None = None) -> dict:
    """Check settings and the space before Ray starts; returns the validated space spec."""
    s = settings
    if s.num_samples < 1:
        raise ValueError(f"--num-samples must be >= 1, got {s.num_samples}")
    if not 1 <= s.ensemble <= s.num_samples:
        raise ValueError(f"--ensemble must be within 1..--num-samples ({s.num_samples}), got {s.ensemble}")
    if s.cv == 1 or s.cv < 0:
        raise ValueError(f"--cv must be 0 (one split) or a number of folds >= 2, got {s.cv}")
    if s.split not in ("grouped", "random"):
        raise ValueError(f"--split must be grouped or random, got {s.split!r}")
    if s.max_epochs < 1:
        raise ValueError(f"--max-epochs must be >= 1, got {s.max_epochs}")
    if not 1 <= s.grace_period <= s.max_epochs:
        raise ValueError(
            f"--grace-period must be within 1..--max-epochs ({s.max_epochs}), got {s.grace_period}"
        )
    if s.reduction_factor < 2:
        raise ValueError(f"--reduction-factor must be >= 2, got {s.reduction_factor}")
    if s.cpus_per_trial <= 0 or s.gpus_per_trial < 0:
        raise ValueError(
            f"need --cpus-per-trial > 0 and --gpus-per-trial >= 0, got {s.cpus_per_trial}, {s.gpus_per_trial}"
        )
    if s.max_concurrent < 0 or s.max_failures < 0:
        raise ValueError(
            f"--max-concurrent and --max-failures must be >= 0, got {s.max_concurrent}, {s.max_failures}"
        )
    if s.cache_precision not in ("32", "bf16"):
        raise ValueError(f"--cache-precision must be 32 or bf16, got {s.cache_precision!r}")
    if s.cache_views < 1 or s.cache_max_gb <= 0:
        raise ValueError(
            f"need --cache-views >= 1 and --cache-max-gb > 0, got {s.cache_views}, {s.cache_max_gb}"
        )
    if s.metric not in ("val/loss", "val/auroc"):
        raise ValueError(f"--metric must be val/loss or val/auroc, got {s.metric}")
    if gpus_available is not None and s.gpus_per_trial > gpus_available:
        raise ValueError(
            f"--gpus-per-trial {s.gpus_per_trial} but this machine has {gpus_available} GPU(s); "
            "lower it, or join a cluster with GPUs through --address"
        )
    validate_spec(get_spec(s.space), FIELD_TYPES)
    spec = effective_spec(s)
    clash = sorted(set(spec) & set(s.base) - {"model"})
    if clash:
        warn(f"the space samples {clash}; the command-line values for them are ignored")
    for corner in ("low", "high"):  # every numeric entry at both ends must make a valid TrainConfig
        values = {
            k: (bounds(v)[0 if corner == "low" else 1] if bounds(v) else _first(v)) for k, v in spec.items()
        }
        try:
            TrainConfig.from_dict({**s.base, **values, "max_epochs": s.max_epochs})
        except ValueError as exc:
            raise SpaceError(f"space {s.space!r} at its {corner} bounds: {exc}") from None
    _check_first_rung(spec, s)
    return spec


def effective_spec(s: SearchSettings) -> dict:
    """The space as this search runs it: its constants that ``--set`` names are replaced by the --set value
    (they leave the space and stay in ``base``); sampled entries always come from the space."""
    spec = get_spec(s.space)
    for key in s.overrides:
        value = spec.get(key)
        if key in spec and not (isinstance(value, dict) and len(value) == 1):
            del spec[key]
    return spec


def _first(v):
    return v["choice"][0] if isinstance(v, dict) and "choice" in v else v


def _check_first_rung(spec: dict, s: SearchSettings) -> None:
    """ASHA's first comparison (after ``grace_period`` epochs) must come after stage 2 has begun."""
    model = spec.get("model", s.base.get("model"))
    stage2 = bounds(spec.get("stage2_epoch", s.base.get("stage2_epoch", TrainConfig.stage2_epoch)))
    if model != "resnet50" or stage2 is None or stage2[1] >= s.max_epochs:
        return
    latest = int(stage2[1])
    if s.grace_period <= latest:
        message = (
            f"ASHA's first rung (after --grace-period {s.grace_period} epochs) comes before stage 2 has trained for "
            f"an epoch in every trial (stage2_epoch up to {latest}, counted from 0): trials would be stopped on "
            f"stage-1 results alone. Use --grace-period >= {latest + 1}"
        )
        if not s.allow_early_rung:
            raise ValueError(message + ", or pass --allow-early-rung to accept it")
        warn(message)


# ----------------------------------------------------------------------------- command line
def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tuning.search",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d = SearchSettings()
    g = p.add_argument_group("data")
    g.add_argument(
        "--data", default=None, help="folder with yes/ and no/ or a .zip (default: the phantom set)"
    )
    g.add_argument(
        "--split-seed", type=int, default=d.split_seed, help=f"grouped split seed (default: {d.split_seed})"
    )
    g.add_argument("--strict", action="store_true", help="refuse bad image files instead of skipping them")
    add_positive_class_flag(g)
    g.add_argument(
        "--split",
        default=d.split,
        choices=["grouped", "random"],
        help="grouped: duplicate groups never straddle splits; random: file by file, LEAKY, only to show how "
        f"much duplicates inflate a result (default: {d.split})",
    )
    g.add_argument(
        "--cv",
        type=int,
        default=d.cv,
        metavar="K",
        help="nested K-fold cross-validation: each fold in turn is the test set of a search and refit on the "
        "other folds; the report pools the K out-of-fold predictions (default: 0, one train/val/test split)",
    )
    g = p.add_argument_group("model (values the space does not sample)")
    g.add_argument(
        "--weights",
        default="imagenet",
        help="resnet50 weights: imagenet (torchvision cache/download), a state_dict file, or none "
        "(default: imagenet)",
    )
    g.add_argument(
        "--image-size",
        type=int,
        default=TrainConfig.image_size,
        help=f"network input side in px (default: {TrainConfig.image_size})",
    )
    g.add_argument(
        "--resize",
        type=int,
        default=None,
        help="resize side in px before cropping (default: 8/7 of --image-size)",
    )
    g.add_argument(
        "--batch-size",
        type=int,
        default=TrainConfig.batch_size,
        help=f"images per batch (default: {TrainConfig.batch_size})",
    )
    g.add_argument(
        "--precision",
        default="auto",
        help="auto (bf16-mixed on a GPU or a CPU with bf16 instructions, else 32-true), 32-true, bf16-mixed",
    )
    g.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other fixed hyperparameter, e.g. --set patience=3 (repeatable); it also replaces a constant "
        "of the space (e.g. --set crop=none with resnet_stage2), never a sampled entry",
    )
    g = p.add_argument_group("tuning")
    g.add_argument(
        "--space",
        default=d.space,
        help=f"baseline_cnn, resnet_stage1, resnet_stage2 or a JSON file (default: {d.space})",
    )
    g.add_argument(
        "--num-samples", type=int, default=d.num_samples, help=f"trials (default: {d.num_samples})"
    )
    g.add_argument(
        "--max-epochs",
        type=int,
        default=d.max_epochs,
        help=f"epochs per trial, ASHA's max_t (default: {d.max_epochs})",
    )
    g.add_argument(
        "--grace-period",
        type=int,
        default=d.grace_period,
        help=f"ASHA's first rung, epochs (default: {d.grace_period})",
    )
    g.add_argument(
        "--reduction-factor",
        type=int,
        default=d.reduction_factor,
        help=f"ASHA's reduction factor (default: {d.reduction_factor})",
    )
    g.add_argument(
        "--metric",
        default=d.metric,
        choices=["val/loss", "val/auroc"],
        help=f"ranking metric (default: {d.metric})",
    )
    g.add_argument(
        "--seed", type=int, default=d.seed, help=f"seed of the sampler and of every trial (default: {d.seed})"
    )
    g.add_argument(
        "--max-failures",
        type=int,
        default=d.max_failures,
        help=f"retries of a failing trial (default: {d.max_failures})",
    )
    g.add_argument(
        "--ensemble",
        type=int,
        default=d.ensemble,
        metavar="N",
        help="refit the N best trials and test the mean of their class probabilities (default: 1, the best "
        "trial alone)",
    )
    g.add_argument(
        "--allow-early-rung", action="store_true", help="only warn when ASHA's first rung precedes stage 2"
    )
    g = p.add_argument_group("speed")
    g.add_argument(
        "--no-cache",
        action="store_true",
        help="recompute the frozen backbone in every trial (the reference path; default: cache it once)",
    )
    g.add_argument(
        "--cache-views",
        type=int,
        default=d.cache_views,
        help=f"augmented views per training image in the feature cache (default: {d.cache_views})",
    )
    g.add_argument(
        "--cache-max-gb",
        type=float,
        default=d.cache_max_gb,
        help=f"refuse a feature cache larger than this, in GB (default: {d.cache_max_gb})",
    )
    g.add_argument(
        "--cache-precision",
        default=d.cache_precision,
        choices=["bf16", "32"],
        help="arithmetic of the frozen backbone when the cache is built: bf16 autocast (about 2x faster on CPUs "
        f"with bf16 support and GPUs) or 32 (float32) (default: {d.cache_precision})",
    )
    g = p.add_argument_group("resources and cluster")
    g.add_argument(
        "--cpus-per-trial",
        type=float,
        default=d.cpus_per_trial,
        help=f"CPUs per trial; also its torch threads (default: {d.cpus_per_trial})",
    )
    g.add_argument(
        "--gpus-per-trial",
        type=float,
        default=d.gpus_per_trial,
        help=f"GPUs per trial, fractions allowed (default: {d.gpus_per_trial})",
    )
    g.add_argument(
        "--max-concurrent",
        type=int,
        default=d.max_concurrent,
        help="trials at once (default: 0, as resources allow)",
    )
    g.add_argument(
        "--address",
        default=os.environ.get("RAY_ADDRESS"),
        help="join this Ray cluster, e.g. auto (default: $RAY_ADDRESS, else start a local Ray)",
    )
    g.add_argument(
        "--dashboard-host",
        default=d.dashboard_host,
        help=f"interface the local dashboard binds to (default: {d.dashboard_host})",
    )
    g.add_argument(
        "--dashboard-port",
        type=int,
        default=d.dashboard_port,
        help=f"dashboard port (default: {d.dashboard_port})",
    )
    g.add_argument("--no-dashboard", action="store_true", help="start the local Ray without its dashboard")
    g = p.add_argument_group("output")
    g.add_argument(
        "--out", default=None, help="run folder (default: results/<space>-<timestamp>/; must not exist)"
    )
    g.add_argument(
        "--storage",
        default=None,
        help="Ray Tune storage: a shared path or cloud URI (default: <run folder>/ray)",
    )
    g.add_argument(
        "--resume",
        metavar="RUN_DIR",
        default=None,
        help="finish an interrupted search in RUN_DIR, then refit",
    )
    return p


def _parse_set(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in FIELD_TYPES:
            raise ValueError(
                f"--set {item!r}: expected KEY=VALUE with KEY one of {', '.join(sorted(FIELD_TYPES))}"
            )
        kind = FIELD_TYPES[key]
        try:
            out[key] = {"int": int, "float": float, "bool": lambda v: v.lower() in ("1", "true", "yes")}.get(
                kind, str
            )(value)
        except ValueError:
            raise ValueError(f"--set {item!r}: {key} must be of type {kind}") from None
    return out


def settings_from_args(args: argparse.Namespace, argv: list[str]) -> SearchSettings:
    fixed = _parse_set(args.set)
    resize = args.resize or round(args.image_size * 8 / 7)
    base = {
        "weights": args.weights,
        "image_size": args.image_size,
        "resize": resize,
        "batch_size": args.batch_size,
        "precision": args.precision,
        "threads": max(1, int(args.cpus_per_trial)),
        **fixed,
    }
    overrides = sorted(fixed)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    space_name = Path(args.space).stem if args.space.endswith(".json") else args.space
    return SearchSettings(
        space=args.space,
        data=args.data,
        positive_class=args.positive_class,
        split_seed=args.split_seed,
        split=args.split,
        cv=args.cv,
        ensemble=args.ensemble,
        strict=args.strict,
        num_samples=args.num_samples,
        max_epochs=args.max_epochs,
        grace_period=args.grace_period,
        reduction_factor=args.reduction_factor,
        metric=args.metric,
        seed=args.seed,
        cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial,
        max_concurrent=args.max_concurrent,
        max_failures=args.max_failures,
        allow_early_rung=args.allow_early_rung,
        address=args.address,
        dashboard_host=args.dashboard_host,
        dashboard_port=args.dashboard_port,
        dashboard=not args.no_dashboard,
        storage=args.storage,
        cache=not args.no_cache,
        cache_views=args.cache_views,
        cache_max_gb=args.cache_max_gb,
        cache_precision=args.cache_precision,
        run_dir=str(Path(args.out or Path("results") / f"{space_name}-{stamp}")),
        base=base,
        overrides=overrides,
        command="python -m tuning.search " + shlex.join(argv),
    )


def load_settings(run_dir: str | Path) -> SearchSettings:
    path = Path(run_dir) / "search.json"
    if not path.is_file():
        raise ValueError(
            f"--resume {run_dir}: no search.json there; expected the folder of an earlier search"
        )
    raw = json.loads(path.read_text())
    known = {f.name for f in fields(SearchSettings)}
    return SearchSettings(**{k: v for k, v in raw.items() if k in known})


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = get_args_parser().parse_args(argv)
    if args.resume:
        settings = load_settings(args.resume)
        settings.run_dir = str(Path(args.resume))
        resume = True
    else:
        settings = settings_from_args(args, argv)
        resume = False
        run_dir = Path(settings.run_dir)
        if run_dir.exists() and any(run_dir.iterdir()):
            raise ValueError(
                f"run folder {run_dir} exists and is not empty; choose another --out, or --resume it"
            )
    from tuning.search_run import run_search

    gpus = None if settings.address else _local_gpus()
    validate(settings, gpus_available=gpus)
    started = time.perf_counter()
    report = run_search(settings, resume=resume)
    print(f"total time {time.perf_counter() - started:.0f} s")
    return 0 if report is not None else 1


def _local_gpus() -> int:
    import torch

    return torch.cuda.device_count()


if __name__ == "__main__":
    sys.exit(run_main(main))
