"""One training run without Ray, the engine of ``tuning.train`` and of a search's refit: train, select the best
epoch on validation, evaluate that checkpoint once on the test split, and write the run folder: ``metrics.csv``,
``model.pt`` (the self-describing best checkpoint), ``split.csv``, ``loss_curves.png``, ``confusion_matrix.png``,
``roc.png`` (one-vs-rest curves for more than two classes) and ``report.json``."""

from __future__ import annotations

import csv
import dataclasses
import io
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger

from modules.checkpoint import eval_transform, load_classifier, predict_probabilities, write_checkpoint
from modules.dataset import PreparedData
from modules.files import atomic_write_json, atomic_write_text
from modules.split import majority_baselines
from modules.statistics import classification_metrics
from modules.weights import WeightsState
from tuning import engine
from tuning.backbone import calibrated, random_weights
from tuning.cli import set_threads
from tuning.config import TrainConfig
from tuning.plots import plot_confusion, plot_loss_curves, plot_roc, plot_roc_ovr
from tuning.provenance import versions

TRAIN_ON = ("train", "train+val")
_LIGHTNING_DIR = "lightning_checkpoints"  # Lightning's own checkpoints, removed once model.pt is written


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
    train_on: str = "train",
    reused: ReusedTrial | None = None,
) -> dict:
    """Train, select the best epoch on validation, test it once, write the run folder; returns the report.

    ``train_on`` "train+val": train on the validation images too, for exactly ``cfg.max_epochs`` epochs (no
    validation is left to choose an epoch: the caller chose the count), and keep the last epoch.

    ``cache``: a ``FeatureCache`` over these images; when it fits ``cfg`` (see ``tuning.engine.cache_fits``),
    only the part above the frozen layers trains, on the cached outputs, as in the search's trials. The
    exported checkpoint is the whole network either way. ``test_outputs``: filled with the test outputs
    (``ClassifierModule.test_outputs``: probabilities and labels in the order of the test images).

    ``reused``: the best-epoch weights of a search trial this run would repeat exactly (``tuning.refit``):
    nothing trains; the network takes those weights, ``metrics.csv`` holds the trial's curves up to that epoch,
    and the exported checkpoint is tested as ``tuning.evaluate`` would score it (the whole network on the test
    images, with flip TTA when the config asks for it)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    engine.quiet_lightning()
    set_threads(cfg.threads)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    atomic_write_text(out / "split.csv", data.split_csv())

    validate = train_on == "train"
    module, weights, dm, cached = _build_run(cfg, data, train_on, backbone_state=backbone_state, cache=cache)
    tested = "test" in data.splits  # a final fit on every image has no test split
    if reused is not None:
        fit = _take_trial(cfg, module, reused, out)
    else:
        fit = _fit_and_test(
            cfg, module, dm, out, progress=progress, cached=cached, validate=validate, test=tested
        )
    _export_checkpoint(out, module.network, cfg, data, weights=weights, best_epoch=fit.best_epoch)
    if tested and (cfg.tta == "flip" or reused is not None):
        module.test_outputs = _checkpoint_test_outputs(out / "model.pt", data, flip=cfg.tta == "flip")
    if test_outputs is not None and tested:
        test_outputs.update(module.test_outputs)
    if tested:
        probs, targets, test = _test_metrics(cfg, data, module.test_outputs)
        plots = _plot_run(cfg, data, test, probs, targets, out)
    else:
        test, plots = None, _plot_run(cfg, data, None, None, None, out)
    report = {
        **_report(
            cfg,
            data,
            fit,
            test,
            plots,
            kind=kind,
            command=command,
            weights=weights,
            layout=getattr(module.network, "layout", None),
            cached=cached,
            train_on=train_on,
        ),
        **(extra_report or {}),
    }
    if reused is not None:
        report["reused_trial"] = {
            "trial_id": reused.trial_id,
            "epochs": reused.epochs,
            "why": "a refit would repeat this trial exactly (same images, config, seed and epochs): its best "
            "epoch's weights were tested instead of training them again",
        }
    atomic_write_json(out / "report.json", report)
    return report


def _build_run(cfg: TrainConfig, data: PreparedData, train_on: str, *, backbone_state, cache):
    """``engine.build_run`` on the images the run trains on: the train split, or train and val together."""
    if train_on not in TRAIN_ON:
        raise ValueError(f"train_on must be one of {', '.join(TRAIN_ON)}, got {train_on!r}")
    splits = data.splits if train_on == "train" else ["train" if s == "val" else s for s in data.splits]
    serving = cache.with_splits(splits) if cache is not None else None
    trial_data = dataclasses.replace(data.trial_data(), splits=splits)
    if backbone_state is None and cfg.model == "resnet50" and str(cfg.weights).lower() == "none":
        trained = [image for image, split in zip(trial_data.images, splits, strict=True) if split == "train"]
        backbone_state = calibrated(random_weights(cfg.seed), cfg, trained)
    return engine.build_run(cfg, trial_data, backbone_state=backbone_state, cache=serving)


@dataclass(frozen=True)
class ReusedTrial:
    """A search trial's best epoch, to be tested instead of retrained: its id, the epochs it had trained, the
    network's weights after them, and its curves ({Lightning metric name: [(training_iteration, value)]})."""

    trial_id: str
    epochs: int
    state_dict: dict
    curves: dict


@dataclass(frozen=True)
class _Fit:
    """What a fit left: the best epoch (-1 when none was saved), its ``cfg.monitor`` value (None when none),
    the epochs trained and the fit's wall time in seconds."""

    best_epoch: int
    best_value: float | None
    epochs_trained: int
    seconds: float


def _fit_and_test(
    cfg: TrainConfig,
    module,
    dm,
    out: Path,
    *,
    progress: bool,
    cached: bool,
    validate: bool = True,
    test: bool = True,
) -> _Fit:
    """Fit with early stopping on ``cfg.monitor``, logging to ``out/metrics.csv`` and keeping the best epoch's
    Lightning checkpoint under ``out/lightning_checkpoints``; then test that checkpoint once. ``validate``
    False: no validation, ``cfg.max_epochs`` epochs, the last one kept and tested."""
    if validate:
        checkpoint = ModelCheckpoint(
            dirpath=out / _LIGHTNING_DIR,
            monitor=cfg.monitor,
            mode=cfg.monitor_mode,
            save_top_k=1,
            filename="best-{epoch}",
        )
        callbacks = [
            checkpoint,
            EarlyStopping(monitor=cfg.monitor, mode=cfg.monitor_mode, patience=cfg.patience),
        ]
    else:
        # only the last epoch is kept: write it once, at the end, not after every epoch (each write holds the
        # network and the optimiser's state, hundreds of MB for a ResNet50)
        checkpoint = ModelCheckpoint(
            dirpath=out / _LIGHTNING_DIR, save_top_k=1, filename="last-{epoch}", every_n_epochs=cfg.max_epochs
        )
        callbacks = [checkpoint]
    logger = CSVLogger(save_dir=str(out), name="", version="")
    trainer = engine.make_trainer(
        cfg,
        callbacks=[*engine.staging_callbacks(cfg), *callbacks],
        logger=logger,
        default_root_dir=out,
        enable_progress_bar=progress,
        enable_checkpointing=True,
        reload_dataloaders=cached,
        validate=validate,
    )
    started = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    fit_seconds = time.perf_counter() - started
    best_path = checkpoint.best_model_path
    best_epoch = _epoch_of(best_path)
    if test:  # (without a test split, as in a final fit, the module holds the kept last epoch already)
        trainer.test(module, datamodule=dm, ckpt_path=best_path or None, verbose=False)
    return _Fit(best_epoch, _float(checkpoint.best_model_score), trainer.current_epoch, fit_seconds)


def _take_trial(cfg: TrainConfig, module, reused: ReusedTrial, out: Path) -> _Fit:
    """Load a trial's best-epoch weights into ``module.network`` and write its curves as ``out/metrics.csv``
    (Lightning's CSVLogger layout: epoch counted from 0, one row per epoch)."""
    module.network.load_state_dict(reused.state_dict)
    rows: dict[int, dict] = {}
    for name, points in reused.curves.items():
        for iteration, value in points:
            rows.setdefault(iteration, {"epoch": iteration - 1})[name] = value
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["epoch", *sorted(reused.curves)], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows[i] for i in sorted(rows))
    atomic_write_text(out / "metrics.csv", buf.getvalue())
    monitored = dict(reused.curves.get(cfg.monitor, []))
    return _Fit(reused.epochs - 1, monitored.get(reused.epochs), reused.epochs, 0.0)


def _checkpoint_test_outputs(checkpoint: Path, data: PreparedData, *, flip: bool) -> dict:
    """The test outputs of the exported checkpoint (the tested epoch, the whole network), with left-right flip
    test-time augmentation when ``flip``, as ``tuning.evaluate`` and ``tuning.predict`` compute them from that
    file."""
    network, meta = load_classifier(checkpoint)
    test = data.indices("test")
    pixels = [data.images.records[i].pixels for i in test]
    probs = torch.from_numpy(predict_probabilities(network, pixels, eval_transform(meta), flip=flip))
    outputs = {"probs_all": probs, "labels": torch.from_numpy(data.images.targets[test])}
    if data.positive is not None:
        outputs["probs"] = probs[:, data.positive]
    return outputs


def _test_metrics(cfg: TrainConfig, data: PreparedData, outputs: dict):
    """(probabilities (n, N), class indices (n,), the test metrics beside the test split's majority baseline)."""
    labels = data.images.classes
    baseline = majority_baselines(data.images.labels, data.splits, labels)["test"]["accuracy"]
    probs, targets = outputs["probs_all"].numpy(), outputs["labels"].numpy()
    test = classification_metrics(
        probs, targets, labels, positive=data.positive, majority_baseline=baseline, seed=cfg.seed
    )
    return probs, targets, test


def _export_checkpoint(
    out: Path, network, cfg: TrainConfig, data: PreparedData, *, weights: WeightsState, best_epoch: int
) -> None:
    """Write ``out/model.pt``, the self-describing checkpoint of the network as tested (the best epoch)."""
    labels = data.images.classes
    write_checkpoint(
        out / "model.pt",
        network,
        model=cfg.model,
        network_hparams=engine.network_hparams(cfg, layout=getattr(network, "layout", "v1.5")),
        num_classes=len(labels),
        classes=list(labels),
        positive_class=data.positive_class,
        config=cfg.to_dict(),
        preprocessing=cfg.preprocessing.to_dict(),
        weights_source=weights.description,
        weights_provenance=weights.provenance,
        data=data.data_info(),
        best_epoch=best_epoch,
        versions=versions(),
    )
    # model.pt holds the best epoch; Lightning's copy is redundant
    shutil.rmtree(out / _LIGHTNING_DIR, ignore_errors=True)


def _plot_run(cfg: TrainConfig, data: PreparedData, test: dict | None, probs, targets, out: Path) -> list:
    """The loss curves, the test confusion matrix and ROC (one-vs-rest for more than two classes) under
    ``out`` (the loss curves alone when there was no test); returns the paths written (None for one left out)."""
    curves = plot_loss_curves(
        out / "metrics.csv",
        out / "loss_curves.png",
        stage2_epoch=cfg.stage2_epoch if cfg.model == "resnet50" else None,
        title=f"{cfg.model}: loss per epoch",
    )
    if test is None:
        return [curves]
    return [
        curves,
        plot_confusion(
            test["confusion_matrix"],
            test["confusion_labels"],
            out / "confusion_matrix.png",
            title="test confusion matrix",
        ),
        plot_roc(probs[:, data.positive], targets == data.positive, out / "roc.png")
        if data.positive is not None
        else plot_roc_ovr(probs, targets, data.images.classes, out / "roc.png"),
    ]


def _report(
    cfg: TrainConfig,
    data: PreparedData,
    fit: _Fit,
    test: dict,
    plots: list,
    *,
    kind: str,
    command: str,
    weights: WeightsState,
    layout: str | None = None,
    cached: bool,
    train_on: str = "train",
) -> dict:
    """The run's report.json: what ran on what (config, data, weights, versions), the selection and the test."""
    return {
        "kind": kind,
        "command": command,
        "data": data.data_info(),
        "config": cfg.to_dict(),
        "weights": weights.description,
        "weights_provenance": weights.provenance,  # where the weights come from, when known
        "weights_layout": layout,  # the ResNet50 layout the network ran in (None for a CNN)
        "trained_on_feature_cache": cached,
        "precision": engine.resolve_precision(cfg),  # what "auto" meant on this machine
        "best_epoch": fit.best_epoch,
        "epochs_trained": fit.epochs_trained,
        "trained_on": train_on,  # train, or train+val (a fixed number of epochs, the last kept)
        "selection": {"metric": cfg.monitor, "mode": cfg.monitor_mode, "value": fit.best_value}
        if train_on == "train"
        else {"metric": None, "epochs": cfg.max_epochs, "kept": "the last epoch"},
        "metrics": {"test": test},  # None for a final fit on every image (no test split)
        "time_s": {"fit": round(fit.seconds, 2)},
        "versions": versions(),
        "artifacts": {
            "checkpoint": "model.pt",
            "metrics": "metrics.csv",
            "plots": [p.name for p in plots if p is not None],
            "split": "split.csv",
        },
    }


def _epoch_of(path: str) -> int:
    """Epoch index from a 'best-epoch=N.ckpt' file name (-1 when there is none)."""
    stem = Path(path).stem if path else ""
    return int(stem.split("epoch=")[1]) if "epoch=" in stem else -1


def _float(value) -> float | None:
    return None if value is None else float(value)
