"""``python -m tuning.train``: one training run without Ray (debugging, and the engine of the search's refit).

Trains on the train split, picks the epoch with the best validation metric, evaluates that checkpoint once on
the test split, and writes into ``--out``: ``metrics.csv``, ``model.pt`` (self-describing best checkpoint),
``split.csv``, ``loss_curves.png``, ``confusion_matrix.png``, ``roc.png`` (one-vs-rest curves for more than two
classes) and ``report.json``. The classes are the data's class folders; a two-class set scores its
``--positive-class`` (default ``yes``) for sensitivity, specificity and the ROC.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import time
import warnings
from dataclasses import fields
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger

from modules.dataset import PreparedData, resolve_data
from modules.split import majority_baselines
from tuning import engine
from tuning.cli import add_positive_class_flag, output_folder, run_main, warn
from tuning.engine import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, TrainConfig
from tuning.files import atomic_write_bytes, atomic_write_json, atomic_write_text
from tuning.report import (
    classification_metrics,
    plot_confusion,
    plot_loss_curves,
    plot_roc,
    plot_roc_ovr,
    summary_lines,
    versions,
)

QUIET_WARNINGS = (
    ".*does not have many workers.*",
    ".*The number of training batches.*",
    ".*GPU available but not used.*",
    ".*Checkpoint directory .* exists and is not empty.*",
    ".*Experiment logs directory .* exists and is not empty.*",
    ".*treespec, LeafSpec.*",
)


def quiet_lightning() -> None:
    """Silence Lightning's advice that does not apply to in-memory data on a small set."""
    for pattern in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    import logging

    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)


def export_checkpoint(
    path: Path, module, cfg: TrainConfig, data: PreparedData, *, best_epoch: int, weights: str
) -> Path:
    """A checkpoint that needs no pickle (loads with ``weights_only=True``) and describes itself.

    ``positive_class`` is the positive class's name for two classes, None for more (format version 2)."""
    state = {k: v.detach().cpu().contiguous() for k, v in module.network.state_dict().items()}
    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "model": cfg.model,
        "network_hparams": engine.network_hparams(cfg),
        "num_classes": len(data.images.classes),
        "classes": list(data.images.classes),
        "positive_class": data.positive_class,
        "config": cfg.to_dict(),
        "preprocessing": cfg.preprocessing.to_dict(),
        "weights_source": weights,
        "data": data.data_info(),
        "best_epoch": best_epoch,
        "versions": versions(),
        "state_dict": state,
    }
    import io

    buf = io.BytesIO()
    torch.save(payload, buf)
    return atomic_write_bytes(path, buf.getvalue())


def run_training(
    cfg: TrainConfig,
    data: PreparedData,
    out_dir: str | Path,
    *,
    command: str = "",
    kind: str = "train",
    progress: bool = True,
    extra_report: dict | None = None,
    backbone_state=None,
    cache=None,
    test_outputs: dict | None = None,
) -> dict:
    """Train, select the best epoch on validation, test it once, write the run folder; returns the report.

    ``cache``: a ``FeatureCache`` over these images; when it fits ``cfg`` (see ``tuning.trial.cache_fits``),
    only the part above the frozen layers trains, on the cached outputs, as in the search's trials. The
    exported checkpoint is the whole network either way. ``test_outputs``: filled with the test outputs
    (``ClassifierModule.test_outputs``: probabilities and labels in the order of the test images)."""
    from tuning.trial import cache_fits

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    quiet_lightning()
    engine.apply_threads(cfg)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    atomic_write_text(out / "split.csv", data.split_csv())

    trial_data = data.trial_data()
    weights = engine.balanced_weights(trial_data) if cfg.class_weights == "balanced" else None
    cached = cache is not None and cache_fits(cache, cfg)
    module, weights_desc = engine.build_classifier(
        cfg,
        len(trial_data.classes),
        class_weights=weights,
        backbone_state=backbone_state,
        positive=data.positive,
        cached_depth=cfg.unfreeze_depth if cached else None,
    )
    dm = engine.build_datamodule(cfg, trial_data, cache=cache.with_splits(data.splits) if cached else None)
    ckpt_dir = out / "lightning_checkpoints"
    checkpoint = ModelCheckpoint(
        dirpath=ckpt_dir, monitor=cfg.monitor, mode=cfg.monitor_mode, save_top_k=1, filename="best-{epoch}"
    )
    stopper = EarlyStopping(monitor=cfg.monitor, mode=cfg.monitor_mode, patience=cfg.patience)
    logger = CSVLogger(save_dir=str(out), name="", version="")
    trainer = engine.make_trainer(
        cfg,
        callbacks=[*engine.staging_callbacks(cfg), checkpoint, stopper],
        logger=logger,
        default_root_dir=out,
        enable_progress_bar=progress,
        enable_checkpointing=True,
        reload_dataloaders=cached,
    )
    started = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    fit_seconds = time.perf_counter() - started
    best_path = checkpoint.best_model_path
    best_epoch = _epoch_of(best_path)
    trainer.test(module, datamodule=dm, ckpt_path=best_path or None, verbose=False)

    if test_outputs is not None:
        test_outputs.update(module.test_outputs)
    outputs = module.test_outputs
    labels = data.images.classes
    baseline = majority_baselines(data.images.labels, data.splits, labels)["test"]["accuracy"]
    probs, targets = outputs["probs_all"].numpy(), outputs["labels"].numpy()
    test = classification_metrics(
        probs, targets, labels, positive=data.positive, majority_baseline=baseline, seed=cfg.seed
    )
    export_checkpoint(out / "model.pt", module, cfg, data, best_epoch=best_epoch, weights=weights_desc)
    shutil.rmtree(
        ckpt_dir, ignore_errors=True
    )  # model.pt holds the best epoch; Lightning's copy is redundant

    plots = [
        plot_loss_curves(
            out / "metrics.csv",
            out / "loss_curves.png",
            stage2_epoch=cfg.stage2_epoch if cfg.model == "resnet50" else None,
            title=f"{cfg.model}: loss per epoch",
        ),
        plot_confusion(
            test["confusion_matrix"],
            test["confusion_labels"],
            out / "confusion_matrix.png",
            title="test confusion matrix",
        ),
        plot_roc(probs[:, data.positive], targets == data.positive, out / "roc.png")
        if data.positive is not None
        else plot_roc_ovr(probs, targets, labels, out / "roc.png"),
    ]
    report = {
        "kind": kind,
        "command": command,
        "data": data.data_info(),
        "config": cfg.to_dict(),
        "weights": weights_desc,
        "trained_on_feature_cache": cached,
        "precision": engine.resolve_precision(cfg),  # what "auto" meant on this machine
        "best_epoch": best_epoch,
        "epochs_trained": trainer.current_epoch,
        "selection": {
            "metric": cfg.monitor,
            "mode": cfg.monitor_mode,
            "value": _float(checkpoint.best_model_score),
        },
        "metrics": {"test": test},
        "time_s": {"fit": round(fit_seconds, 2)},
        "versions": versions(),
        "artifacts": {
            "checkpoint": "model.pt",
            "metrics": "metrics.csv",
            "plots": [p.name for p in plots if p is not None],
            "split": "split.csv",
        },
        **(extra_report or {}),
    }
    atomic_write_json(out / "report.json", report)
    return report


def _epoch_of(path: str) -> int:
    """Epoch index from a 'best-epoch=N.ckpt' file name (-1 when there is none)."""
    stem = Path(path).stem if path else ""
    return int(stem.split("epoch=")[1]) if "epoch=" in stem else -1


def _float(value) -> float | None:
    return None if value is None else float(value)


# ----------------------------------------------------------------------------- command line
def add_config_flags(p: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field (``--max-epochs``), help with the default and unit."""
    defaults = TrainConfig()
    group = p.add_argument_group("model and training")
    help_text = {
        "model": "network: cnn or resnet50",
        "weights": "resnet50 weights: imagenet (torchvision download/cache), a state_dict file, or none",
        "lr": "learning rate of the head (resnet50) or the whole network (cnn)",
        "backbone_lr": "learning rate of the unfrozen resnet50 stages",
        "stage2_epoch": "resnet50: first epoch (from 0) with unfrozen stages; >= max-epochs: never",
        "unfreeze_depth": "resnet50 stages to unfreeze: 1 = layer4 ... 4 = all",
        "monitor": "validation metric that picks the best epoch: val/loss, val/auroc or val/acc",
        "precision": "auto (bf16-mixed on a GPU or a CPU with bf16 instructions, else 32-true), 32-true or bf16-mixed",
        "threads": "torch CPU threads (0: torch's default)",
        "image_size": "network input side in px",
        "resize": "side in px the image is resized to before cropping",
        "rotation": "maximum random rotation in degrees (training only)",
        "patience": "early stopping: epochs without improvement",
        "crop": "none, or brain: cut each scan to the head's bounding box before resizing",
        "intensity": "training brightness/contrast jitter: factors within 1 +- this",
        "scale": "training zoom jitter: factors within 1 +- this",
    }
    for f in fields(TrainConfig):
        default = getattr(defaults, f.name)
        flag = "--" + f.name.replace("_", "-")
        text = f"{help_text.get(f.name, f.name.replace('_', ' '))} (default: {default})"
        if f.type == "bool":
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=text)
        else:
            kind = {"int": int, "float": float}.get(f.type, str)
            group.add_argument(flag, type=kind, default=default, help=text)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig.from_dict({f.name: getattr(args, f.name) for f in fields(TrainConfig)})


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tuning.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d = p.add_argument_group("data")
    d.add_argument(
        "--data",
        default=None,
        help="folder with one sub-folder per class (e.g. yes/ and no/) or a .zip (default: the phantom set)",
    )
    add_positive_class_flag(d)
    d.add_argument("--split-seed", type=int, default=0, help="seed of the grouped split (default: 0)")
    d.add_argument("--strict", action="store_true", help="refuse bad image files instead of skipping them")
    p.add_argument("--out", required=True, help="run folder to write (refused if it holds a report already)")
    p.add_argument("--overwrite", action="store_true", help="allow writing into a folder with a report")
    p.add_argument("--no-progress", action="store_true", help="hide Lightning's progress bar")
    add_config_flags(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    cfg = config_from_args(args)
    out = output_folder(args.out, "train", marker="report.json", overwrite=args.overwrite)
    data = resolve_data(
        args.data, seed=args.split_seed, strict=args.strict, positive_class=args.positive_class, warn=warn
    )
    command = "python -m tuning.train " + shlex.join(argv if argv is not None else sys.argv[1:])
    report = run_training(cfg, data, out, command=command, progress=not args.no_progress)
    m = report["metrics"]["test"]
    print(
        f"\n{cfg.model}: best epoch {report['best_epoch'] + 1} of {report['epochs_trained']}"
        f" by {cfg.monitor}; data: {report['data']['source']}"
        + (" (SYNTHETIC)" if report["data"]["synthetic"] else "")
    )
    print("\n".join(summary_lines(m)))
    print(
        f"written: {out}/report.json, model.pt, metrics.csv, loss_curves.png, confusion_matrix.png, roc.png"
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
