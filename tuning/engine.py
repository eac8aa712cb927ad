"""The training engine shared by ``tuning.train``, the search's trials and its refit: a ``TrainConfig`` becomes
a network in its LightningModule, its data module (images, or the feature cache), callbacks and a Trainer."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch

from modules.cached_training import CachedDataModule, CachedTail
from modules.datamodule import MRIDataModule
from modules.dataset import TrialData
from modules.feature_cache import FeatureCache
from modules.finetune import StagedFineTuning
from modules.lit_module import ClassifierModule
from modules.networks import build_network
from modules.weights import WeightsState, load_backbone_state, resolve_weights
from tuning.config import TrainConfig

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
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)


def network_hparams(cfg: TrainConfig, *, layout: str = "v1.5") -> dict:
    """The keyword arguments of ``build_network`` for ``cfg`` (a checkpoint stores them); ``layout``: the
    ResNet50 layout the run resolved (``WeightsState.layout_for``)."""
    if cfg.model == "cnn":
        return {
            "width": cfg.cnn_width,
            "depth": cfg.cnn_depth,
            "dropout": cfg.dropout,
            "fc_hidden": cfg.cnn_fc_hidden,
        }
    return {"dropout": cfg.dropout, "layout": layout}


def build_classifier(
    cfg: TrainConfig,
    num_classes: int,
    *,
    class_weights: list[float] | None = None,
    backbone_state: WeightsState | None = None,
    cached_blocks: int | None = None,
    positive: int | None = None,
):
    """The network (weights loaded) wrapped in the LightningModule. Returns (module, its starting weights: a
    ``WeightsState``, description and provenance; ``none`` for a CNN).

    ``positive``: index of a two-class problem's positive class (None: the last class); None for N classes.

    ``backbone_state``: weights already read (by the search's driver, shipped through Ray's object store);
    without it, ``cfg.weights`` is resolved here. ``cached_blocks``: wrap the ResNet50 in ``CachedTail`` for
    training on a ``FeatureCache`` (its cut below that many trainable blocks, ``cfg.trainable_blocks``). A
    ResNet50 is built in the layout of its weights (``cfg.weights_layout``, see ``WeightsState.layout_for``);
    the network's ``layout`` says which.
    """
    if cfg.model == "resnet50":
        state = backbone_state if backbone_state is not None else resolve_weights(cfg.weights)
        hparams = network_hparams(cfg, layout=state.layout_for(cfg.weights_layout))
        network = build_network("resnet50", num_classes=num_classes, weights="none", **hparams)
        if state.tensors is not None:
            load_backbone_state(network, state.tensors, state.description)
    else:
        network = build_network(cfg.model, num_classes=num_classes, **network_hparams(cfg))
        state = WeightsState(None, "none")
    if cached_blocks is not None:  # train only the part above the cut, on cached frozen-backbone outputs
        network = CachedTail(network, cached_blocks)
    module = ClassifierModule(
        network=network,
        num_classes=num_classes,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        optimizer=cfg.optimizer,
        scheduler=cfg.scheduler,
        max_epochs=cfg.max_epochs,
        warmup_epochs=cfg.warmup_epochs,
        class_weights=class_weights,
        label_smoothing=cfg.label_smoothing,
        positive_class=positive if num_classes == 2 else None,
    )
    return module, state


def cache_fits(cache: FeatureCache, cfg: TrainConfig) -> bool:
    """Whether a cached run computes what the plain one would: same preprocessing, a cut below the blocks its
    stage 2 trains (``cfg.trainable_blocks``)."""
    if cfg.model != "resnet50" or cache.info.get("preprocessing") != cfg.preprocessing.to_dict():
        return False
    if cache.info.get("weights_layout", "auto") != cfg.weights_layout:
        return False
    return cfg.stage2_epoch >= cfg.max_epochs or cfg.trainable_blocks in cache.train_cut


def build_run(cfg: TrainConfig, data: TrialData, *, backbone_state: WeightsState | None = None, cache=None):
    """What one run trains: (module, its starting weights, datamodule, whether it trains on ``cache``).

    ``cache``: a ``FeatureCache`` serving this run's splits; used only when it fits ``cfg`` (``cache_fits``),
    and then only the part above the frozen layers trains, on the cached outputs."""
    class_weights = balanced_weights(data) if cfg.class_weights == "balanced" else None
    cached = cache is not None and cache_fits(cache, cfg)
    module, weights = build_classifier(
        cfg,
        len(data.classes),
        class_weights=class_weights,
        backbone_state=backbone_state,
        cached_blocks=cfg.trainable_blocks if cached else None,
        positive=data.positive,
    )
    return module, weights, build_datamodule(cfg, data, cache=cache if cached else None), cached


def balanced_weights(data: TrialData) -> list[float]:
    """Inverse class frequency on the training split, normalised to mean 1."""
    train = [t for t, s in zip(data.targets, data.splits, strict=True) if s == "train"]
    counts = [max(1, train.count(k)) for k in range(len(data.classes))]
    k, n = len(counts), sum(counts)
    return [n / (k * c) for c in counts]


def build_datamodule(cfg: TrainConfig, data: TrialData, *, cache=None) -> pl.LightningDataModule:
    """Loaders over the images, or with ``cache`` (a ``FeatureCache`` serving this run's splits) over the cached
    outputs of the frozen layers (pooled features, then from stage 2 on the cut below the blocks it trains,
    ``cfg.trainable_blocks``)."""
    if cache is not None:
        return CachedDataModule(
            cache,
            blocks=cfg.trainable_blocks,
            stage2_epoch=cfg.stage2_epoch,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
        )
    return MRIDataModule(
        data.images,
        data.targets,
        data.splits,
        preprocessing=cfg.preprocessing,
        batch_size=cfg.batch_size,
        num_workers=cfg.num_workers,
        seed=cfg.seed,
    )


def staging_callbacks(cfg: TrainConfig) -> list[pl.Callback]:
    if cfg.model != "resnet50":
        return []
    return [
        StagedFineTuning(
            stage2_epoch=cfg.stage2_epoch,
            unfreeze_depth=cfg.unfreeze_depth,
            unfreeze_blocks=cfg.unfreeze_blocks,
            backbone_lr=cfg.backbone_lr,
            freeze_bn_stats=cfg.freeze_bn_stats,
        )
    ]


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU has bfloat16 instructions (x86 AVX512-BF16 or AMX-BF16, read from /proc/cpuinfo).
    Without them bf16 is emulated and not faster, so "auto" keeps float32 there."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:  # not Linux
            return False
    return any(flag in ("avx512_bf16", "amx_bf16") for flag in cpuinfo.split())


def resolve_precision(cfg: TrainConfig, *, cuda: bool | None = None) -> str:
    """With "auto": bf16-mixed on a GPU and on a CPU with bf16 instructions, 32-true elsewhere. On this project's
    2-core CPU (AVX512-BF16) bf16 autocast ran the 30 stage-2 ResNet50 trials of a 5-fold cross-validation 1.78x
    faster, and its out-of-fold predictions matched the float32 run's (no decision changed, probabilities within
    0.015; results/brain_mri/SPEED.md). ``cuda``: whether the run has a GPU (default: whether torch sees one)."""
    if cfg.precision != "auto":
        return cfg.precision
    cuda = torch.cuda.is_available() if cuda is None else cuda
    return "bf16-mixed" if cuda or cpu_has_native_bf16() else "32-true"


def make_trainer(
    cfg: TrainConfig,
    *,
    callbacks: list[pl.Callback],
    logger=False,
    default_root_dir: str | Path | None = None,
    enable_progress_bar: bool = False,
    enable_checkpointing: bool = False,
    reload_dataloaders: bool = False,
    validate: bool = True,
    profiler=None,
) -> pl.Trainer:
    """A Trainer for one run. ``reload_dataloaders``: new loaders every epoch (the cached path switches from
    pooled features to cut activations when stage 2 starts). ``validate`` False: no validation loop (a run
    that trains on the validation images too, for a fixed number of epochs). ``profiler``: Lightning's (the
    trial profile benchmark)."""
    return pl.Trainer(
        limit_val_batches=None if validate else 0,
        reload_dataloaders_every_n_epochs=1 if reload_dataloaders else 0,
        max_epochs=cfg.max_epochs,
        accelerator="auto",
        devices=1,
        precision=resolve_precision(cfg),
        callbacks=callbacks,
        logger=logger,
        default_root_dir=default_root_dir,
        enable_progress_bar=enable_progress_bar,
        enable_checkpointing=enable_checkpointing,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        deterministic=False,
        profiler=profiler,
    )
