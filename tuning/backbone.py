"""The frozen backbone every trial of a search shares: its weights (read or drawn once, in the driver) and the
feature cache of its outputs (computed once per experiment)."""

from __future__ import annotations

import dataclasses

import torch

from modules.dataset import PreparedData
from modules.feature_cache import FeatureCache, build_feature_cache
from modules.networks import build_network, depth_blocks
from modules.progress_lines import ProgressLines
from modules.transforms import build_transform
from modules.weights import WeightsState, calibrate_batch_norm, load_backbone_state, resolve_weights
from tuning.config import TrainConfig
from tuning.settings import SearchSettings, is_sampled, space_values


def search_weights(spec: dict, s: SearchSettings) -> WeightsState | None:
    """The ResNet50 backbone weights of a search (None for a CNN space). Random init (``--weights none``) is
    drawn here, once, from ``s.seed``, so that the cache, every trial and the refit start from one backbone."""
    model = spec.get("model", s.base.get("model", TrainConfig.model))
    if model != "resnet50" and not isinstance(model, dict):  # a space may also choose the model
        return None
    state = resolve_weights(s.base.get("weights", "imagenet"))
    return random_weights(s.seed) if state.tensors is None else state


def random_weights(seed: int) -> WeightsState:
    """A randomly initialised ResNet50 backbone drawn from ``seed`` (the global generator left as it was)."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    backbone = build_network("resnet50", num_classes=2, weights="none").backbone
    torch.random.set_rng_state(generator_state)
    return WeightsState(dict(backbone.state_dict()), f"none (random init, seed {seed})", random_init=True)


def with_batch_norm_statistics(
    s: SearchSettings, spec: dict, data: PreparedData, weights: WeightsState | None
) -> WeightsState | None:
    """``weights`` as they are, or for a random init (``--weights none``) with every batch-norm layer's running
    statistics taken from the training images of ``data`` (``modules.weights.calibrate_batch_norm``): never
    from validation or test images, so a cross-validation sets them per fold."""
    if weights is None or not weights.random_init or weights.calibrated:
        return weights
    pixels = [data.images.records[i].pixels for i in data.indices("train")]
    return calibrated(weights, base_config(s, spec), pixels)


def calibrated(weights: WeightsState, cfg: TrainConfig, pixels: list) -> WeightsState:
    """``weights`` with the batch-norm statistics of ``pixels`` (the training images, in ``cfg``'s evaluation
    preprocessing and layout), described as such."""
    network = _backbone_network(cfg, weights, 2)
    calibrate_batch_norm(network, pixels, build_transform(cfg.preprocessing, train=False))
    return dataclasses.replace(
        weights,
        tensors=dict(network.backbone.state_dict()),
        description=f"{weights.description}; batch-norm statistics from the {len(pixels)} training images",
        calibrated=True,
    )


def base_config(s: SearchSettings, spec: dict) -> TrainConfig:
    """The configuration every trial shares: the search's fixed values and the space's constants (e.g. crop,
    jitter), which set the preprocessing that the cache and the batch-norm statistics must match."""
    constants = {k: v for k, v in spec.items() if not is_sampled(v)}
    return TrainConfig.from_dict({**s.base, **constants, "max_epochs": s.max_epochs})


def build_cache(
    s: SearchSettings,
    spec: dict,
    data: PreparedData,
    weights: WeightsState | None,
    *,
    every_image: bool = False,
) -> FeatureCache | None:
    """The feature cache for a ResNet50 space (once per experiment, on the GPU when there is one), or None.

    ``every_image``: training views and the evaluation view of every image (a cross-validation: each image
    is trained on in some folds and tested in one)."""
    models = space_values(spec, "model", s.base.get("model", TrainConfig.model))
    if not s.cache or models != ["resnet50"]:
        return None
    base = base_config(s, spec)
    blocks = needed_cuts(spec, base, s.max_epochs)
    network = _backbone_network(base, weights, len(data.images.classes))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    td = data.trial_data()
    everything = [True] * len(td.splits) if every_image else None
    # a refit on train+val trains on the validation images too: they need training views
    train_on = everything or (
        [sp in ("train", "val") for sp in td.splits] if s.refit_on == "train+val" else None
    )
    # a random backbone's batch norm, set from a few images, divides by tiny variances: bf16's rounding grows
    # through its 50 layers until cached features no longer give the network's outputs (0.2 apart in
    # probability on the test phantom), so it is cached in float32
    precision = "32" if weights is not None and weights.random_init else s.cache_precision
    cache = build_feature_cache(
        network,
        td.images,
        td.targets,
        td.splits,
        preprocessing=base.preprocessing,
        blocks=blocks,
        views=s.cache_views,
        seed=s.seed,
        device=device,
        max_bytes=int(s.cache_max_gb * 1e9),
        precision=precision,
        train_on=train_on,
        evaluate_on=everything,
        progress=ProgressLines("feature cache", unit="views"),
    )
    cache.info["preprocessing"] = base.preprocessing.to_dict()
    cache.info["weights_layout"] = base.weights_layout  # one weights state per search: one resolved layout
    cuts = f", cuts below the last {list(cache.blocks)} blocks" if cache.blocks else ""
    print(
        f"feature cache: {cache.nbytes / 1e6:.1f} MB (float16, computed in {precision}; {s.cache_views} "
        f"views per training image; pooled features{cuts}), built once in {cache.build_seconds:.1f} s on "
        f"{device}; shared through Ray's object store"
    )
    return cache


def needed_cuts(spec: dict, base: TrainConfig, max_epochs: int) -> set[int]:
    """The cuts (trainable blocks above each, ``TrainConfig.trainable_blocks``) the trials can need: those of
    the space's ``unfreeze_blocks`` values above 0 and, where it can be 0, of its ``unfreeze_depth`` values;
    none when no trial can reach stage 2."""
    starts = space_values(spec, "stage2_epoch", base.stage2_epoch)
    unfreezes = any(not isinstance(v, int) or v < max_epochs for v in starts)  # a sampled range may unfreeze
    if not unfreezes:
        return set()
    blocks = set(_int_values(spec, "unfreeze_blocks", base.unfreeze_blocks))
    depths = _int_values(spec, "unfreeze_depth", base.unfreeze_depth) if 0 in blocks else []
    return (blocks - {0}) | {depth_blocks(d) for d in depths}


def _int_values(spec: dict, key: str, default: int) -> list[int]:
    """The values an integer entry of a space can take: a constant, a choice, or a randint range."""
    value = spec.get(key, default)
    if isinstance(value, dict) and "randint" in value:
        low, high = value["randint"]
        return list(range(int(low), int(high)))  # Ray's randint excludes its upper bound
    return [int(v) for v in space_values(spec, key, default)]


def _backbone_network(base: TrainConfig, weights: WeightsState | None, num_classes: int):
    """The ResNet50 the cache runs: built in the weights' layout, with the weights loaded."""
    layout = (weights or WeightsState(None, "none")).layout_for(base.weights_layout)
    network = build_network("resnet50", num_classes=num_classes, weights="none", layout=layout)
    if weights is not None and weights.tensors is not None:
        load_backbone_state(network, weights.tensors, weights.description)
    return network


def cache_summary(cache: FeatureCache | None, trials_on_cache: int = 0) -> dict:
    """The ``search.cache`` block of a report."""
    if cache is None:
        return {"enabled": False}
    return {
        "enabled": True,
        "views": cache.views,
        "cut_blocks": list(cache.blocks),
        "megabytes": round(cache.nbytes / 1e6, 1),
        "build_s": round(cache.build_seconds, 2),
        "precision": cache.info.get("precision"),
        "trials_on_cache": trials_on_cache,
    }
