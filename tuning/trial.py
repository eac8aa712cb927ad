"""The Ray Tune trainable: one trial trains one config with the same engine as ``tuning.train``.

The data and the backbone weights arrive through Ray's object store (``tune.with_parameters``), so a cluster
needs no shared data folder. Ray's config dict becomes a typed ``TrainConfig`` here and nowhere else.
"""

from __future__ import annotations

import pytorch_lightning as pl
from ray import tune
from ray.tune.integration.pytorch_lightning import TuneReportCheckpointCallback

from tuning import engine
from tuning.engine import TrainConfig

# Lightning metric name -> the name Tune reports and ranks on (mapped once, here)
TUNE_METRICS = {
    "val_loss": "val/loss",
    "val_auroc": "val/auroc",
    "val_acc": "val/acc",
    "train_loss": "train/loss",
}
RANK_METRICS = {"val/loss": ("val_loss", "min"), "val/auroc": ("val_auroc", "max")}


class EpochReport(TuneReportCheckpointCallback):
    """Tune's Lightning callback, plus the epoch and the node the trial runs on (placement on a cluster)."""

    def _get_report_dict(self, trainer, pl_module):
        out = super()._get_report_dict(trainer, pl_module)
        if out is not None:
            import ray

            out["epoch"] = trainer.current_epoch
            out["node_id"] = ray.get_runtime_context().get_node_id()
        return out


def train_trial(config: dict, *, data, base: dict, backbone_state) -> None:
    """Train ``base`` overridden by Ray's ``config``; report validation metrics to Tune after every epoch."""
    from tuning.train import quiet_lightning

    quiet_lightning()
    cfg = TrainConfig.from_dict({**base, **config})
    engine.apply_threads(cfg)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    class_weights = engine.balanced_weights(data) if cfg.class_weights == "balanced" else None
    module, _ = engine.build_classifier(
        cfg, len(data.classes), class_weights=class_weights, backbone_state=backbone_state
    )
    # after the training epoch: validation of that epoch has run, so every metric is there
    report = EpochReport(metrics=TUNE_METRICS, save_checkpoints=False, on="train_epoch_end")
    trainer = engine.make_trainer(cfg, callbacks=[*engine.staging_callbacks(cfg), report])
    trainer.fit(module, datamodule=engine.build_datamodule(cfg, data))


def trainable(data, base: dict, backbone_state, resources: dict):
    """``train_trial`` bound to its (object-store) parameters and resources, ready for ``tune.Tuner``."""
    bound = tune.with_parameters(train_trial, data=data, base=base, backbone_state=backbone_state)
    return tune.with_resources(bound, resources)
