"""The Ray Tune trainable: one trial trains one config with the same engine as ``tuning.train``.

The data and the backbone weights arrive through Ray's object store (``tune.with_parameters``), so a cluster
needs no shared data folder. Ray's config dict becomes a typed ``TrainConfig`` here and nowhere else.
"""

from __future__ import annotations

import os
import tempfile
import time
from contextlib import contextmanager

import pytorch_lightning as pl
import torch
from ray import tune
from ray.tune import Checkpoint
from ray.tune.integration.pytorch_lightning import TuneReportCheckpointCallback

from tuning import engine
from tuning.cli import set_threads
from tuning.config import TUNE_METRICS, TrainConfig

# the file in a trial's checkpoint (EpochReport.keep_best): {"state_dict", "iteration", "metric", "value"}
BEST_WEIGHTS = "best_weights.pt"


class EpochReport(TuneReportCheckpointCallback):
    """Tune's Lightning callback, plus the epoch, the node the trial runs on (placement on a cluster) and
    ``compute_s``: the seconds spent so far inside training and validation batches (forward, backward and
    optimiser step; Tune's ``time_total_s`` minus it is what the trial spent on anything else: start-up, data
    loading, Lightning's loops and hooks, metrics, reports).

    ``keep_best`` (Lightning metric name, "min" or "max"): report a checkpoint with an epoch's report only when
    that metric is the trial's best so far, holding the network's weights alone (``BEST_WEIGHTS``: no
    optimiser state); Tune keeps the latest, so each trial's stored checkpoint is its best epoch. A refit that
    would repeat the best trial exactly uses it instead of training again (``tuning.refit``). None: no
    checkpoints (Ray's callback would write the whole Lightning state after every epoch)."""

    compute_s = 0.0
    _batch_started = 0.0
    keep_best: tuple[str, str] | None = None
    _best: float | None = None

    def _start(self, *args) -> None:
        self._batch_started = time.perf_counter()

    def _stop(self, *args) -> None:
        self.compute_s += time.perf_counter() - self._batch_started

    on_train_batch_start = on_validation_batch_start = _start
    on_train_batch_end = on_validation_batch_end = _stop

    def _get_report_dict(self, trainer, pl_module):
        out = super()._get_report_dict(trainer, pl_module)
        if out is not None:
            import ray

            out["epoch"] = trainer.current_epoch
            out["cached"] = int(getattr(self, "cached", False))
            out["node_id"] = ray.get_runtime_context().get_node_id()
            out["compute_s"] = round(self.compute_s, 3)
        return out

    @contextmanager
    def _get_checkpoint(self, trainer):
        value = self._new_best(trainer)
        if value is None:
            yield None
            return
        with tempfile.TemporaryDirectory() as folder:
            state = {k: v.detach().cpu() for k, v in trainer.lightning_module.network.state_dict().items()}
            iteration = trainer.current_epoch + 1  # Tune's training_iteration of this report
            meta = {"iteration": iteration, "metric": self.keep_best[0], "value": value}
            torch.save({"state_dict": state, **meta}, os.path.join(folder, BEST_WEIGHTS))
            yield Checkpoint.from_directory(folder)

    def _new_best(self, trainer) -> float | None:
        """The monitored value when this epoch is the trial's best so far (strictly, as Lightning's
        ModelCheckpoint and the trials table rank), else None."""
        if self.keep_best is None or trainer.sanity_checking:
            return None
        name, mode = self.keep_best
        current = trainer.callback_metrics.get(name)
        if current is None:
            return None
        value = float(current)
        if self._best is not None and not (value < self._best if mode == "min" else value > self._best):
            return None
        self._best = value
        return value


class SharedCache:
    """A ``FeatureCache`` put into Ray's object store once, and the split assignment one search reads from it.

    Every search of a cross-validation shares the one stored cache (no copy per fold); images outside the
    search's train/val splits (its test images) are masked out, so a trial cannot read them."""

    def __init__(self, ref, splits: list[str]) -> None:
        self.ref = ref
        self.splits = [s if s in ("train", "val") else "" for s in splits]

    def get(self):
        import ray

        return ray.get(self.ref).with_splits(self.splits)


def train_trial(config: dict, *, data, base: dict, backbone_state, cache=None, keep_best=None) -> None:
    """Train ``base`` overridden by Ray's ``config``; report validation metrics to Tune after every epoch.

    With a ``FeatureCache`` that fits this config, only the part above the cut trains, on the cached outputs of
    the frozen layers (the same values the full network would compute); otherwise the plain path runs.
    ``keep_best``: see ``EpochReport``."""
    engine.quiet_lightning()
    if isinstance(cache, SharedCache):
        cache = cache.get()
    cfg = TrainConfig.from_dict({**base, **config})
    set_threads(cfg.threads)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    module, _, dm, cached = engine.build_run(cfg, data, backbone_state=backbone_state, cache=cache)
    # after the training epoch: validation of that epoch has run, so every metric is there
    report = EpochReport(metrics=TUNE_METRICS, save_checkpoints=False, on="train_epoch_end")
    report.cached = cached
    report.keep_best = keep_best
    trainer = engine.make_trainer(
        cfg, callbacks=[*engine.staging_callbacks(cfg), report], reload_dataloaders=cached
    )
    trainer.fit(module, datamodule=dm)


def trainable(data, base: dict, backbone_state, resources: dict, cache=None, keep_best=None):
    """``train_trial`` bound to its parameters and resources, ready for ``tune.Tuner``. ``with_parameters``
    puts the data, weights and cache into Ray's object store once; every trial on every node reads them
    from there (NumPy arrays zero-copy)."""
    bound = tune.with_parameters(
        train_trial, data=data, base=base, backbone_state=backbone_state, cache=cache, keep_best=keep_best
    )
    return tune.with_resources(bound, resources)
