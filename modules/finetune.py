"""Staged fine-tuning of a pretrained backbone: head only first, then the last residual stages (or the last
bottleneck blocks) at a lower LR.

The helpers work on any network with ``backbone``, ``head``, ``stage_modules(depth)`` and
``block_modules(blocks)`` (``ResNet50Classifier``) and need no Trainer, so benchmarks and caches can reproduce
a stage exactly; the callback drives them in a fit.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable

import pytorch_lightning as pl
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim import Optimizer

from modules.networks import MAX_UNFREEZE_BLOCKS

MAX_UNFREEZE_DEPTH = 4
_STAGED = ("backbone", "head", "stage_modules", "block_modules")


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def staged_network(pl_module: nn.Module) -> nn.Module:
    """The network of ``pl_module`` (its ``network`` attribute, or itself) checked for the staged interface."""
    network = getattr(pl_module, "network", pl_module)
    needed = [name for name in _STAGED if not hasattr(network, name)]
    if needed:
        raise ValueError(
            f"staged fine-tuning needs a network with backbone, head, stage_modules() and block_modules() "
            f"(e.g. ResNet50Classifier); {type(network).__name__} lacks {needed}"
        )
    return network


def set_trainable(modules: Iterable[nn.Module], trainable: bool) -> None:
    """Set ``requires_grad`` of every parameter of ``modules``."""
    for module in modules:
        for param in module.parameters():
            param.requires_grad_(trainable)


def unfrozen_modules(network: nn.Module, depth: int, *, blocks: int = 0) -> list[nn.Module]:
    """The backbone submodules stage 2 trains: the last ``blocks`` bottleneck blocks when ``blocks`` > 0,
    else the last ``depth`` stages."""
    return network.block_modules(blocks) if blocks else network.stage_modules(depth)


def unfreeze_stages(network: nn.Module, depth: int, *, blocks: int = 0) -> list[nn.Parameter]:
    """Make the last ``depth`` stages of ``network.backbone`` (the last ``blocks`` bottleneck blocks when
    ``blocks`` > 0) trainable; returns their parameters."""
    stages = unfrozen_modules(network, depth, blocks=blocks)
    set_trainable(stages, True)
    return [param for stage in stages for param in stage.parameters()]


def unfrozen_part(depth: int, blocks: int) -> str:
    """What stage 2 unfreezes, as the options that say it (for messages and resume checks)."""
    return f"unfreeze_blocks={blocks}" if blocks else f"unfreeze_depth={depth}"


def frozen_bn_modules(network: nn.Module, *, freeze_bn_stats: bool) -> list[_BatchNorm]:
    """Backbone batch-norm layers that must stay in eval mode while training: those whose affine parameters
    are frozen, and with ``freeze_bn_stats`` also the trainable ones (their running statistics stay fixed)."""
    return [
        module
        for module in network.backbone.modules()
        if isinstance(module, _BatchNorm)
        and (freeze_bn_stats or not any(p.requires_grad for p in module.parameters(recurse=False)))
    ]


def add_param_group(optimizer: Optimizer, params: list[nn.Parameter], lr: float, schedulers=()) -> None:
    """Add ``params`` to ``optimizer`` as a new group with base learning rate ``lr``.

    With LR schedulers (objects with ``base_lrs``) the group joins their schedule: its base LR is appended to
    each scheduler's ``base_lrs`` and it starts at ``lr`` times the factor the schedule has reached so far
    (the first group's current LR over its base LR), so every group follows the same curve. A scheduler with
    ``add_group`` (``modules.schedules.WarmupCosine``) places the group itself (it warms up from this step).
    """
    factor = 1.0
    for scheduler in schedulers:
        if hasattr(scheduler, "add_group"):  # a schedule that places a joining group itself (WarmupCosine)
            factor = scheduler.add_group(lr) / lr
            continue
        base = scheduler.base_lrs[0]
        factor = optimizer.param_groups[0]["lr"] / base if base else 1.0
        scheduler.base_lrs.append(lr)
        if hasattr(scheduler, "_last_lr"):
            scheduler._last_lr.append(lr * factor)
    optimizer.add_param_group({"params": params, "lr": lr * factor, "initial_lr": lr})


class StagedFineTuning(pl.Callback):
    """Train the head alone, then from epoch ``stage2_epoch`` also the last ``unfreeze_depth`` backbone stages
    (or, with ``unfreeze_blocks`` > 0, the last ``unfreeze_blocks`` bottleneck blocks).

    Stage 1 (epochs < ``stage2_epoch``): the whole backbone is frozen (``requires_grad=False``) and the
    LightningModule's optimiser holds only the head. Stage 2: the stages ``network.stage_modules(unfreeze_depth)``
    (1 = layer4 ... 4 = all, stem included), or with ``unfreeze_blocks`` = k > 0 the blocks
    ``network.block_modules(k)`` (1 = layer4[2] ... 16 = all, stem included; it takes precedence over the
    depth; 3 and 9 train what depths 1 and 2 train) become trainable and join the optimiser as a new parameter
    group at ``backbone_lr`` (following the LR schedule, see ``add_param_group``). ``stage2_epoch=0`` starts
    unfrozen; ``stage2_epoch >= max_epochs`` never unfreezes (head-only training).

    Batch norm: frozen layers always run in eval mode, so their running statistics stay the pretrained ones.
    With ~170 training images in batches of 16, updating them would shift the features under a head that is
    being trained on them, and would make stage-1 features change from epoch to epoch; frozen, stage 1 is a
    deterministic function of the image (cacheable). With ``freeze_bn_stats`` (default) the batch norm of the
    unfrozen stages or blocks also keeps its statistics (eval mode) while its affine weights train; without it,
    it trains normally. Eval mode is re-applied at each training epoch and batch start, since ``model.train()``
    anywhere in between would flip it back.

    Resume: ``state_dict`` records whether stage 2 has begun and what it unfreezes (a checkpoint taken in
    stage 2 resumes only with the same ``unfreeze_blocks``, or with both 0 the same ``unfreeze_depth``).
    Resuming from a checkpoint taken in stage 2, ``on_fit_start`` unfreezes and adds the parameter group after
    ``configure_optimizers`` but before Lightning loads the optimiser and scheduler states, so the two-group
    states load into matching groups.
    """

    def __init__(
        self,
        *,
        stage2_epoch: int,
        unfreeze_depth: int,
        backbone_lr: float,
        freeze_bn_stats: bool = True,
        unfreeze_blocks: int = 0,
    ) -> None:
        if not _is_int(stage2_epoch) or stage2_epoch < 0:
            raise ValueError(f"stage2_epoch must be an integer >= 0, got {stage2_epoch!r}")
        if not _is_int(unfreeze_depth) or not 1 <= unfreeze_depth <= MAX_UNFREEZE_DEPTH:
            raise ValueError(
                f"unfreeze_depth must be an integer in 1..{MAX_UNFREEZE_DEPTH}, got {unfreeze_depth!r}"
            )
        if not _is_int(unfreeze_blocks) or not 0 <= unfreeze_blocks <= MAX_UNFREEZE_BLOCKS:
            raise ValueError(
                f"unfreeze_blocks must be an integer in 0..{MAX_UNFREEZE_BLOCKS} (0: whole stages by "
                f"unfreeze_depth), got {unfreeze_blocks!r}"
            )
        if isinstance(backbone_lr, bool) or not isinstance(backbone_lr, numbers.Real) or not backbone_lr > 0:
            raise ValueError(f"backbone_lr must be a number > 0, got {backbone_lr!r}")
        self.stage2_epoch = int(stage2_epoch)
        self.unfreeze_depth = int(unfreeze_depth)
        self.unfreeze_blocks = int(unfreeze_blocks)
        self.backbone_lr = float(backbone_lr)
        self.freeze_bn_stats = freeze_bn_stats
        self.unfrozen = False
        self._resume_unfrozen = False
        self._eval_bn: list[_BatchNorm] = []
        self._train_bn: list[_BatchNorm] = []  # unfrozen batch norm that trains (without freeze_bn_stats)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Freeze the backbone before ``configure_optimizers`` runs."""
        if stage != "fit":
            return
        network = staged_network(pl_module)
        set_trainable([network.backbone], False)
        self.unfrozen = False
        self._eval_bn = frozen_bn_modules(network, freeze_bn_stats=self.freeze_bn_stats)
        self._train_bn = []

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._resume_unfrozen:
            self._unfreeze(trainer, pl_module)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.unfrozen and trainer.current_epoch >= self.stage2_epoch:
            self._unfreeze(trainer, pl_module)
        self._apply_bn_modes()

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx
    ) -> None:
        self._apply_bn_modes()

    def _apply_bn_modes(self) -> None:
        for module in self._eval_bn:
            module.train(False)
        # Lightning restores each submodule's mode after validation, so a batch norm put in eval mode in
        # stage 1 would stay there after unfreezing; without freeze_bn_stats it trains, so put it back
        for module in self._train_bn:
            module.train(True)

    def _unfreeze(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        network = staged_network(pl_module)
        if len(trainer.optimizers) != 1:
            raise ValueError(
                f"staged fine-tuning needs exactly one optimiser, found {len(trainer.optimizers)}"
            )
        optimizer = trainer.optimizers[0]
        params = unfreeze_stages(network, self.unfreeze_depth, blocks=self.unfreeze_blocks)
        schedulers = [c.scheduler for c in trainer.lr_scheduler_configs if c.scheduler.optimizer is optimizer]
        add_param_group(optimizer, params, self.backbone_lr, schedulers)
        self._eval_bn = frozen_bn_modules(network, freeze_bn_stats=self.freeze_bn_stats)
        frozen = {id(m) for m in self._eval_bn}
        self._train_bn = [
            m
            for stage in unfrozen_modules(network, self.unfreeze_depth, blocks=self.unfreeze_blocks)
            for m in stage.modules()
            if isinstance(m, _BatchNorm) and id(m) not in frozen
        ]  # fmt: skip
        self.unfrozen = True
        self._resume_unfrozen = False

    def state_dict(self) -> dict:
        return {
            "unfrozen": self.unfrozen,
            "unfreeze_depth": self.unfreeze_depth,
            "unfreeze_blocks": self.unfreeze_blocks,
            "stage2_epoch": self.stage2_epoch,
        }

    def load_state_dict(self, state_dict: dict) -> None:
        # a checkpoint written before unfreeze_blocks existed unfroze whole stages (0)
        saved = unfrozen_part(
            state_dict.get("unfreeze_depth", self.unfreeze_depth), state_dict.get("unfreeze_blocks", 0)
        )
        current = unfrozen_part(self.unfreeze_depth, self.unfreeze_blocks)
        if state_dict.get("unfrozen") and saved != current:
            raise ValueError(f"checkpoint was taken in stage 2 with {saved}; cannot resume it with {current}")
        self._resume_unfrozen = bool(state_dict.get("unfrozen", False))
