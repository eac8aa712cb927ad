"""Learning-rate schedules that staged fine-tuning can extend with a parameter group mid-training.

torch's own schedulers assume the optimiser's groups are fixed when they are built; the stage-2 backbone group
joins later (``modules.finetune.add_param_group``) and should warm up from the step it joins, which none of
them does (``LambdaLR`` would need a lambda per group known in advance), hence this one.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


class WarmupCosine(LRScheduler):
    """Per-step schedule: each group's LR rises linearly over ``warmup_steps`` from the step it joined, and every
    LR follows one cosine decay from its base to 0 over ``total_steps``.

    Group ``i`` at step ``t``: ``base_lrs[i] * min(1, (t - starts[i] + 1) / warmup_steps) * (1 + cos(pi * t /
    total_steps)) / 2``. ``add_group(lr)`` registers a group appended to the optimiser: its warm-up starts at
    the current step. ``starts`` is part of the state, so a resumed fit continues the same curves."""

    def __init__(self, optimizer: Optimizer, *, total_steps: int, warmup_steps: int = 0) -> None:
        if total_steps < 1 or warmup_steps < 0:
            raise ValueError(
                f"total_steps must be >= 1 and warmup_steps >= 0, got {total_steps} and {warmup_steps}"
            )
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.starts = [0] * len(optimizer.param_groups)
        super().__init__(optimizer)

    def factor(self, group: int, step: int | None = None) -> float:
        """The multiplier of group ``group``'s base LR at ``step`` (default: the current step)."""
        step = self.last_epoch if step is None else step
        since = step - self.starts[group] + 1
        warm = 1.0 if self.warmup_steps == 0 else min(1.0, max(since, 0) / self.warmup_steps)
        return warm * (1 + math.cos(math.pi * min(step, self.total_steps) / self.total_steps)) / 2

    def get_lr(self) -> list[float]:
        return [base * self.factor(i) for i, base in enumerate(self.base_lrs)]

    def add_group(self, lr: float) -> float:
        """Register the optimiser's newest group (base LR ``lr``), warming up from the current step; returns the
        LR it starts at."""
        self.base_lrs.append(lr)
        self.starts.append(max(self.last_epoch, 0))
        start = lr * self.factor(len(self.base_lrs) - 1)
        self._last_lr.append(start)
        return start
