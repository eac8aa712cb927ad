"""Where one cached trial's time goes, epoch by epoch, beside the same steps in a tight loop.

    python -m benchmarks.trial_profile                                  # the phantom at 64 px, random weights
    python -m benchmarks.trial_profile --data ../shared/data/brain_mri --weights ../shared/weights/resnet50_imagenet.pth --image-size 224

The trial is the one a search's trial runs (``tuning.trainable.train_trial``: the same engine, data module,
staging callback, precision and threads), on the same feature cache a search builds (``tuning.backbone``),
but outside Ray, under Lightning's own ``SimpleProfiler``: its recorded durations give, per epoch, the forward
(``training_step``), backward, optimiser step, fetching the next batch, validation steps and the validation
loop, the callbacks' hooks, and the remainder of the epoch (Lightning's loops, metric logging). Ray's part of
a trial (the report after every epoch, the actor's start) is not in this profile: ``trials.csv`` of a search
gives it per trial as ``time_total_s`` minus ``compute_s``.

Then the same epochs in a tight loop (``--loop-epochs`` times over the same batches, with no Lightning: forward,
loss, backward, optimiser step on the training batches, forward on the validation batches), with the trial's
optimiser (fused where PyTorch offers it) and precision. The last line, ``trial_over_tight_loop=<ratio>``, is
the trial's whole ``fit()`` (set-up included) over the tight loop: the ratio that the speed target of a cached
trial (within 1.2x of its tight-loop compute) is about.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from collections import defaultdict
from types import SimpleNamespace

import pytorch_lightning as pl
import torch
from pytorch_lightning.profilers import SimpleProfiler

from modules.feature_cache import FeatureCache
from modules.finetune import add_param_group, frozen_bn_modules, set_trainable, unfreeze_stages
from tuning import engine
from tuning.backbone import build_cache, search_weights, with_batch_norm_statistics
from tuning.cli import set_threads
from tuning.config import TrainConfig
from tuning.flags import flag_fields
from tuning.settings import MODEL_FLAGS, SearchSettings
from tuning.settings_io import settings_from_flags

# Lightning's action names (SimpleProfiler)
FORWARD = "[Strategy]SingleDeviceStrategy.training_step"
BACKWARD = "[Strategy]SingleDeviceStrategy.backward"
STEP = "[LightningModule]ClassifierModule.optimizer_step"  # the closure (forward, backward) and the update
TRAIN_NEXT = "[_TrainingEpochLoop].train_dataloader_next"
VAL_STEP = "[Strategy]SingleDeviceStrategy.validation_step"
VAL_NEXT = "[_EvaluationLoop].val_next"
EPOCH = "run_training_epoch"  # one epoch, its validation included


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.trial_profile",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", default=None, help="data set (default: the phantom set)")
    p.add_argument("--weights", default="none", help="resnet50 weights (default: none, random init)")
    p.add_argument("--image-size", type=int, default=64, help="input side in px (default: 64)")
    p.add_argument("--max-epochs", type=int, default=6, help="epochs of the trial (default: 6)")
    p.add_argument("--stage2-epoch", type=int, default=1, help="first stage-2 epoch (default: 1)")
    p.add_argument("--unfreeze-depth", type=int, default=2, help="stages unfrozen in stage 2 (default: 2)")
    p.add_argument(
        "--unfreeze-blocks",
        type=int,
        default=0,
        help="bottleneck blocks unfrozen instead (default: 0, by depth)",
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads, as --cpus-per-trial 1 (default: 1)")
    p.add_argument("--precision", default="auto", help="auto, 32-true or bf16-mixed (default: auto)")
    p.add_argument(
        "--loop-epochs", type=int, default=2, help="tight-loop passes over the epochs (default: 2)"
    )
    p.add_argument("--split-seed", type=int, default=0, help="seed of the split (default: 0)")
    return p


def _settings(args) -> SearchSettings:
    """A search's settings for these flags (every other setting at its default), built as the search builds
    them, so that the cache is the one a search with the same flags would build."""
    values = {f.name: f.default for f in flag_fields(SearchSettings)}
    values.update(
        data=args.data,
        split_seed=args.split_seed,
        max_epochs=args.max_epochs,
        grace_period=args.max_epochs,  # no ASHA here; only the settings' range check reads it
        refit_on="train",
        run_dir="unused",
    )
    model = {f.name: f.default for f in flag_fields(TrainConfig, only=MODEL_FLAGS)}
    model.update(weights=args.weights, image_size=args.image_size, resize=None, precision=args.precision)
    return settings_from_flags(values, model, [], [])


def trial_config(s: SearchSettings, spec: dict, args) -> TrainConfig:
    """The recipe's space with its sampled values at their middle, except the stage and depth asked for."""
    constants = {k: v for k, v in spec.items() if not isinstance(v, dict)}
    return TrainConfig.from_dict(
        {
            **s.base,
            **constants,
            "lr": 1e-3,
            "backbone_lr": 1e-4,
            "dropout": 0.3,
            "weight_decay": 1e-4,
            "unfreeze_depth": args.unfreeze_depth,
            "unfreeze_blocks": args.unfreeze_blocks,
            "stage2_epoch": args.stage2_epoch,
            "max_epochs": args.max_epochs,
            "threads": args.threads,
        }
    )


def profiled_trial(cfg: TrainConfig, data, weights, cache: FeatureCache) -> tuple[dict, float, pl.Trainer]:
    """Run the trial under ``SimpleProfiler``; (action -> durations, wall seconds of fit, the trainer)."""
    engine.quiet_lightning()
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    module, _, dm, cached = engine.build_run(cfg, data.trial_data(), backbone_state=weights, cache=cache)
    if not cached:
        raise SystemExit("the cache does not fit this trial's config; nothing cached to profile")
    profiler = SimpleProfiler()
    trainer = engine.make_trainer(
        cfg, callbacks=engine.staging_callbacks(cfg), reload_dataloaders=True, profiler=profiler
    )
    started = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    return dict(profiler.recorded_durations), time.perf_counter() - started, trainer


def tight_loop(cfg: TrainConfig, data, weights, cache: FeatureCache, *, passes: int) -> float:
    """Seconds for ``cfg.max_epochs`` epochs of pure compute on the trial's own batches (median of
    ``passes``), stage 1 on pooled features and stage 2 on the cut, with the trial's optimiser and precision."""
    from modules.cached_training import CachedDataModule

    module, _, _, _ = engine.build_run(cfg, data.trial_data(), backbone_state=weights, cache=cache)
    net = module.network
    bf16 = engine.resolve_precision(cfg) == "bf16-mixed"
    loss_fn = torch.nn.CrossEntropyLoss()
    batches = {}
    for key_epoch in (0, cfg.stage2_epoch):
        dm = CachedDataModule(
            cache,
            blocks=cfg.trainable_blocks,
            stage2_epoch=cfg.stage2_epoch,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
        )
        dm.trainer = SimpleNamespace(current_epoch=key_epoch)  # the loaders of that epoch
        batches[key_epoch] = (list(dm.train_dataloader()), list(dm.val_dataloader()))
    # staged as StagedFineTuning stages a trial: the module's own optimiser (head), then the unfrozen blocks as
    # a second group, and the batch norms the trial keeps in eval mode
    set_trainable([net.backbone], False)
    opt1 = module.configure_optimizers()
    opt2 = module.configure_optimizers()
    add_param_group(
        opt2, unfreeze_stages(net, cfg.unfreeze_depth, blocks=cfg.unfreeze_blocks), lr=cfg.backbone_lr
    )
    eval_bn = frozen_bn_modules(net, freeze_bn_stats=cfg.freeze_bn_stats)
    times = []
    for _ in range(passes):
        started = time.perf_counter()
        for epoch in range(cfg.max_epochs):
            stage2 = epoch >= cfg.stage2_epoch
            train, val = batches[cfg.stage2_epoch if stage2 else 0]
            opt = opt2 if stage2 else opt1
            net.train()
            for bn in eval_bn:
                bn.eval()
            for x, y in train:
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    loss = loss_fn(net(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            net.eval()
            with torch.no_grad():
                for x, _y in val:
                    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                        net(x)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def table(durations: dict, fit_s: float, loop_s: float, epochs: int) -> list[str]:
    """The profile per epoch: each part's seconds and its share of the epoch; the rest is Lightning's loops,
    logging and metrics."""
    total = defaultdict(float, {k: sum(v) for k, v in durations.items()})
    epoch_s = max(total[EPOCH], 1e-9)
    update = total[STEP] - total[FORWARD] - total[BACKWARD]
    hooks = sum(v for k, v in total.items() if k.startswith("[Callback]"))
    parts = [
        ("forward (training_step)", total[FORWARD]),
        ("backward", total[BACKWARD]),
        ("optimiser update (AdamW, fused)", update),
        ("next training batch (data)", total[TRAIN_NEXT]),
        ("validation forward (validation_step)", total[VAL_STEP]),
        ("next validation batch (data)", total[VAL_NEXT]),
        ("callbacks' hooks (staging, reports)", hooks),
    ]
    parts.append(("the rest: Lightning's loops, logging, metrics", epoch_s - sum(v for _, v in parts)))
    lines = ["| per epoch (mean over the trial's epochs) | seconds | share of the epoch |", "|---|---|---|"]
    lines += [f"| {name} | {v / epochs:.3f} | {v / epoch_s:.0%} |" for name, v in parts]
    lines.append(f"| whole epoch (run_training_epoch, validation included) | {epoch_s / epochs:.3f} | 100% |")
    lines.append(f"| fit(), all {epochs} epochs, set-up included | {fit_s:.2f} | |")
    lines.append(f"| tight loop, the same {epochs} epochs (no Lightning) | {loop_s:.2f} | |")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    s = _settings(args)
    spec = s.spec()
    data = s.prepared(split=s.split)
    weights = with_batch_norm_statistics(s, spec, data, search_weights(spec, s))
    cfg = trial_config(s, spec, args)
    fixed = {  # the cut this trial needs
        "unfreeze_depth": args.unfreeze_depth,
        "unfreeze_blocks": args.unfreeze_blocks,
        "stage2_epoch": args.stage2_epoch,
    }
    cache = build_cache(s, {**spec, **fixed}, data, weights)
    set_threads(cfg.threads)
    durations, fit_s, _ = profiled_trial(cfg, data, weights, cache)
    loop_s = tight_loop(cfg, data, weights, cache, passes=args.loop_epochs)
    print(
        f"\ncommand: python -m benchmarks.trial_profile {shlex.join(sys.argv[1:] if argv is None else argv)}"
    )
    print(
        f"trial: {cfg.trainable_blocks} blocks unfrozen from epoch {cfg.stage2_epoch} of {cfg.max_epochs}, "
        f"{cfg.image_size} px, batch {cfg.batch_size}, {engine.resolve_precision(cfg)}, {cfg.threads} thread(s); "
        f"{len(data.indices('train'))} training and {len(data.indices('val'))} validation images\n"
    )
    print("\n".join(table(durations, fit_s, loop_s, cfg.max_epochs)))
    print(f"\ntrial_over_tight_loop={fit_s / loop_s:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
