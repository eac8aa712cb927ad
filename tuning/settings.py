"""``SearchSettings``: everything that defines a search, frozen and validated where it is built.

Saved as ``search.json`` so that ``--resume`` repeats a search exactly. Each field's metadata is its flag of
``python -m tuning.search`` (``tuning.flags``); ``settings_from_flags`` turns the parsed flags into settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from modules.dataset import SPLIT_MODES
from modules.feature_cache import CACHE_PRECISIONS
from search_spaces import SpaceError, bounds, get_spec, validate_spec
from tuning.config import FIELD_TYPES, RANK_METRICS, TrainConfig
from tuning.data_options import DataOptions
from tuning.flags import option

LOCALHOSTS = ("127.0.0.1", "localhost", "::1")
# the TrainConfig fields that search takes as flags of their own; any other is given with --set KEY=VALUE
MODEL_FLAGS = ["weights", "weights_layout", "image_size", "resize", "batch_size", "precision"]
TUNING, SPEED, CLUSTER, OUTPUT = "tuning", "speed", "resources and cluster", "output"
SEARCH_ALGS = ("random", "tpe")
# ``--mlflow`` without a URI: an SQLite store in the run folder (MLflow 3 refuses plain file stores by default)
LOCAL_MLFLOW = "local"


def setting(default, help: str, group: str, **kwargs):
    return field(default=default, metadata=option(help, group=group, **kwargs))


@dataclass(frozen=True)
class SearchSettings(DataOptions):
    """The search; ``base`` holds the TrainConfig values the space does not sample. The defaults are the
    confirmed recipe (results/brain_mri/LEVERS.md): 6 trials of 6 epochs, the refit on train+val."""

    split: str = setting(
        "grouped",
        "grouped: groups (copies, patients, volumes) never straddle splits; random: file by file, LEAKY, only "
        "to show how much duplicates inflate a result",
        "data",
        choices=list(SPLIT_MODES),
    )
    cv: int = setting(
        0,
        "nested K-fold cross-validation: each fold in turn is the test set of a search and refit on the other "
        "folds; the report pools the K out-of-fold predictions (0: one train/val/test split)",
        "data",
        metavar="K",
    )
    repeats: int = setting(
        1,
        "with --cv: repeat the cross-validation on R split seeds (--split-seed, +1, ...); the report gives each "
        "repeat's pooled result and the mean and SD across repeats",
        "data",
        metavar="R",
    )
    final: bool = setting(
        False,
        "fit a final model on every image: the search splits them into train/val only (no test split), the refit "
        "trains on train+val (needs --refit-on train+val); no test metrics: score it with tuning.evaluate on "
        "another collection",
        "data",
    )
    space: str = setting(
        "resnet_stage2",
        "baseline_cnn, resnet_stage1, resnet_stage2, resnet_stage2_blocks or a JSON file",
        TUNING,
    )
    num_samples: int = setting(6, "trials", TUNING)
    max_epochs: int = setting(6, "epochs per trial, ASHA's max_t", TUNING)
    grace_period: int = setting(4, "ASHA's first rung, epochs", TUNING)
    reduction_factor: int = setting(2, "ASHA's reduction factor", TUNING)
    metric: str = setting("val/loss", "ranking metric", TUNING, choices=list(RANK_METRICS))
    seed: int = setting(0, "seed of the sampler and of every trial", TUNING)
    search_alg: str = setting(
        "random",
        "how configs are drawn: random (Ray's seeded random sampler) or tpe (Optuna's TPE through Ray's "
        "OptunaSearch, seeded by --seed, at most --max-concurrent trials at once); ASHA stops trials either way",
        TUNING,
        choices=list(SEARCH_ALGS),
    )
    tpe_startup: int = setting(
        10,
        "with --search-alg tpe: trials drawn at random before TPE models the results (Optuna's n_startup_trials)",
        TUNING,
        metavar="N",
    )
    max_failures: int = setting(1, "retries of a failing trial", TUNING)
    ensemble: int = setting(
        1,
        "refit the N best trials and test the mean of their class probabilities (1: the best trial alone)",
        TUNING,
        metavar="N",
    )
    allow_early_rung: bool = setting(False, "only warn when ASHA's first rung precedes stage 2", TUNING)
    refit_on: str = setting(
        "train+val",
        "what the refit of the best config trains on: train (its epoch picked on val, as the trials did), or "
        "train+val (more images, for the best trial's number of epochs, the last one kept)",
        TUNING,
        choices=["train", "train+val"],
    )
    cache: bool = setting(
        True,
        "share the frozen backbone's outputs between trials (resnet50 spaces); --no-cache recomputes them in "
        "every trial (the reference path)",
        SPEED,
    )
    cache_views: int = setting(4, "augmented views per training image in the feature cache", SPEED)
    cache_max_gb: float = setting(4.0, "refuse a feature cache larger than this, in GB", SPEED)
    cache_precision: str = setting(
        "bf16",
        "arithmetic of the frozen backbone when the cache is built: bf16 autocast (about 2x faster on CPUs "
        "with bf16 support and GPUs) or 32 (float32)",
        SPEED,
        choices=list(CACHE_PRECISIONS),
    )
    cpus_per_trial: float = setting(1.0, "CPUs per trial; also its torch threads", CLUSTER)
    gpus_per_trial: float = setting(0.0, "GPUs per trial, fractions allowed", CLUSTER)
    max_concurrent: int = setting(0, "trials at once (0: as resources allow)", CLUSTER)
    address: str | None = setting(
        None, "join this Ray cluster, e.g. auto", CLUSTER, default_text="$RAY_ADDRESS, else start a local Ray"
    )
    dashboard_host: str = setting("127.0.0.1", "interface the local dashboard binds to", CLUSTER)
    dashboard_port: int = setting(8265, "dashboard port", CLUSTER)
    dashboard: bool = setting(True, "start the local Ray with its dashboard", CLUSTER)
    verbose: bool = setting(False, "Ray Tune's own status tables instead of one line per trial event", OUTPUT)
    storage: str | None = setting(
        None, "Ray Tune storage: a shared path or cloud URI", OUTPUT, default_text="<run folder>/ray"
    )
    run_dir: str = setting(
        "", "run folder (must not exist)", OUTPUT, flag="--out", default_text="results/<space>-<timestamp>/"
    )
    mlflow: str | None = setting(
        None,
        "log every trial (parameters, per-epoch metrics) and the refit (test metrics, report, plots, model.pt) to "
        "this MLflow tracking URI; given alone: an SQLite store in the run folder (mlflow.db, artifacts in "
        "mlartifacts/)",
        OUTPUT,
        metavar="URI",
        nargs="?",
        const=LOCAL_MLFLOW,
        default_text="off",
    )
    mlflow_experiment: str | None = setting(
        None, "MLflow experiment of the runs", OUTPUT, metavar="NAME", default_text="the run folder's name"
    )
    base: dict = field(default_factory=dict)  # TrainConfig values the space does not sample
    overrides: list = field(default_factory=list)  # keys given with --set: they replace a space's constants
    command: str = ""

    def __post_init__(self) -> None:
        check_ranges(self)
        self.check_data_options()  # a bad --slices is refused here, before Ray starts
        validate_spec(get_spec(self.space), FIELD_TYPES)
        spec = self.spec()
        for corner in (0, 1):  # every numeric entry at both ends must make a valid TrainConfig
            values = {k: (bounds(v)[corner] if bounds(v) else first_value(v)) for k, v in spec.items()}
            try:
                TrainConfig.from_dict({**self.base, **values, "max_epochs": self.max_epochs})
            except ValueError as exc:
                raise SpaceError(
                    f"space {self.space!r} at its {('low', 'high')[corner]} bounds: {exc}"
                ) from None
        early = self.early_rung()
        if early and not self.allow_early_rung:
            raise ValueError(early + ", or pass --allow-early-rung to accept it")
        if self.search_alg == "tpe" and not any(is_sampled(v) for v in spec.values()):
            raise SpaceError(
                f"--search-alg tpe models sampled hyperparameters, and space {self.space!r} samples none "
                "(every entry is a constant); use --search-alg random or a space with a sampler"
            )

    @property
    def rank(self) -> tuple[str, str]:
        """(Lightning metric name, "min" or "max") that ranks trials."""
        return RANK_METRICS[self.metric]

    @property
    def split_seeds(self) -> list[int]:
        """The split seeds of the repeats: ``split_seed``, ``split_seed + 1``, ..."""
        return list(range(self.split_seed, self.split_seed + self.repeats))

    def spec(self) -> dict:
        """The space as this search runs it: its constants that ``--set`` names are replaced by the --set value
        (they leave the space and stay in ``base``); sampled entries always come from the space."""
        spec = get_spec(self.space)
        for key in self.overrides:
            if key in spec and not is_sampled(spec[key]):
                del spec[key]
        return spec

    def early_rung(self) -> str | None:
        """Why ASHA's first comparison (after ``grace_period`` epochs) comes before stage 2 has begun in
        every trial, or None when it does not."""
        spec = self.spec()
        model = spec.get("model", self.base.get("model"))
        stage2 = bounds(spec.get("stage2_epoch", self.base.get("stage2_epoch", TrainConfig.stage2_epoch)))
        if model != "resnet50" or stage2 is None or stage2[1] >= self.max_epochs:
            return None
        latest = int(stage2[1])
        if self.grace_period > latest:
            return None
        return (
            f"ASHA's first rung (after --grace-period {self.grace_period} epochs) comes before stage 2 has trained "
            f"for an epoch in every trial (stage2_epoch up to {latest}, counted from 0): trials would be stopped "
            f"on stage-1 results alone. Use --grace-period >= {latest + 1}"
        )

    def libraries(self) -> tuple[str, ...]:
        """The optional libraries this search uses; their versions join those its reports record."""
        return (("optuna",) if self.search_alg == "tpe" else ()) + (("mlflow",) if self.mlflow else ())

    def warnings(self) -> list[str]:
        """What the user should hear before the search starts (said once per search, not per fold)."""
        out = []
        clash = sorted(set(self.spec()) & set(self.base) - {"model"})
        if clash:
            out.append(f"the space samples {clash}; the command-line values for them are ignored")
        early = self.early_rung()
        if early:
            out.append(early)
        if self.search_alg == "tpe" and self.tpe_startup >= self.num_samples:
            out.append(
                f"--search-alg tpe draws its first {self.tpe_startup} trials at random (--tpe-startup) and the "
                f"search has {self.num_samples}: no trial is chosen by TPE; raise --num-samples or lower "
                "--tpe-startup"
            )
        return out


def check_ranges(s: SearchSettings) -> None:
    """The settings' own bounds; a ``ValueError`` names the flag, what it got and what it needs."""
    checks = [
        (s.num_samples >= 1, f"--num-samples must be >= 1, got {s.num_samples}"),
        (
            1 <= s.ensemble <= s.num_samples,
            f"--ensemble must be within 1..--num-samples ({s.num_samples}), got {s.ensemble}",
        ),
        (s.cv == 0 or s.cv >= 2, f"--cv must be 0 (one split) or a number of folds >= 2, got {s.cv}"),
        (s.repeats >= 1, f"--repeats must be >= 1, got {s.repeats}"),
        (
            s.repeats == 1 or s.cv >= 2,
            f"--repeats {s.repeats} repeats a cross-validation; expected --cv K too",
        ),
        (s.split in SPLIT_MODES, f"--split must be grouped or random, got {s.split!r}"),
        (s.max_epochs >= 1, f"--max-epochs must be >= 1, got {s.max_epochs}"),
        (
            1 <= s.grace_period <= s.max_epochs,
            f"--grace-period must be within 1..--max-epochs ({s.max_epochs}), got {s.grace_period}",
        ),
        (s.reduction_factor >= 2, f"--reduction-factor must be >= 2, got {s.reduction_factor}"),
        (
            s.cpus_per_trial > 0 and s.gpus_per_trial >= 0,
            f"need --cpus-per-trial > 0 and --gpus-per-trial >= 0, got {s.cpus_per_trial}, {s.gpus_per_trial}",
        ),
        (
            s.max_concurrent >= 0 and s.max_failures >= 0,
            f"--max-concurrent and --max-failures must be >= 0, got {s.max_concurrent}, {s.max_failures}",
        ),
        (
            s.cache_precision in CACHE_PRECISIONS,
            f"--cache-precision must be 32 or bf16, got {s.cache_precision!r}",
        ),
        (
            s.cache_views >= 1 and s.cache_max_gb > 0,
            f"need --cache-views >= 1 and --cache-max-gb > 0, got {s.cache_views}, {s.cache_max_gb}",
        ),
        (s.metric in RANK_METRICS, f"--metric must be val/loss or val/auroc, got {s.metric}"),
        (
            s.search_alg in SEARCH_ALGS,
            f"--search-alg must be one of {', '.join(SEARCH_ALGS)}, got {s.search_alg!r}",
        ),
        (s.tpe_startup >= 1, f"--tpe-startup must be >= 1, got {s.tpe_startup}"),
        (s.mlflow is None or s.mlflow.strip() != "", "--mlflow needs a tracking URI, or no value at all"),
        (s.refit_on in ("train", "train+val"), f"--refit-on must be train or train+val, got {s.refit_on!r}"),
        (not s.final or s.cv == 0, "--final fits one model on every image; expected no --cv"),
        (
            not s.final or s.refit_on == "train+val",
            "--final trains the refit on every image; expected --refit-on train+val",
        ),
        (not s.final or s.ensemble == 1, "--final fits one model; expected --ensemble 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)


def is_sampled(value) -> bool:
    """Whether a space entry is a sampler (a one-key dict such as ``{"choice": [...]}``), not a constant."""
    return isinstance(value, dict) and len(value) == 1


def first_value(v):
    return v["choice"][0] if isinstance(v, dict) and "choice" in v else v


def space_values(spec: dict, key: str, default) -> list:
    """The values an entry of a space can take (a constant, a choice, or the default when absent)."""
    v = spec.get(key, default)
    return list(v["choice"]) if isinstance(v, dict) and "choice" in v else [v]
