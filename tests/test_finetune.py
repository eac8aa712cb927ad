"""Staged fine-tuning: what trains in each stage, batch-norm statistics, the optimiser's groups, and resume."""

import copy
import math
from functools import cache

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from modules.finetune import StagedFineTuning
from modules.lit_module import ClassifierModule
from modules.networks import PyTorchCNN, ResNet50Classifier

HEAD_LR, BACKBONE_LR = 1e-2, 1e-3


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors gain nothing from threads, and on a busy 2-core machine extra threads cost 5x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def loader(n: int = 4, size: int = 32, batch: int = 4) -> DataLoader:
    """Random images ``(n, 3, size, size)`` with alternating labels, in a fixed order."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(n, 3, size, size, generator=generator)
    return DataLoader(TensorDataset(images, torch.arange(n) % 2), batch_size=batch, shuffle=False)


@cache
def _network() -> ResNet50Classifier:
    torch.manual_seed(0)
    return ResNet50Classifier(num_classes=2, dropout=0.0)


def module(scheduler: str = "none", **kwargs) -> ClassifierModule:
    """A fresh module around a copy of one seeded ResNet50 (random init, weights "none")."""
    return ClassifierModule(network=copy.deepcopy(_network()), lr=HEAD_LR, scheduler=scheduler, **kwargs)


def fit(
    model,
    callbacks,
    *,
    max_epochs: int,
    tmp_path,
    ckpt_path=None,
    train_loader=None,
    val_loader=None,
    **kwargs,
) -> pl.Trainer:
    kwargs = {"limit_train_batches": 1, **kwargs}
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=max_epochs,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        **kwargs,
    )
    trainer.fit(model, train_loader or loader(), val_loader, ckpt_path=ckpt_path)
    return trainer


def snapshot(model: ClassifierModule) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.network.state_dict().items()}


def changed(before: dict, after: dict) -> set[str]:
    return {k for k in before if not torch.equal(before[k], after[k])}


def param_names(model: ClassifierModule, prefixes: tuple[str, ...]) -> set[str]:
    return {name for name, _ in model.network.named_parameters() if name.startswith(prefixes)}


def group_names(model: ClassifierModule, optimizer) -> list[set[str]]:
    names = {id(p): name for name, p in model.network.named_parameters()}
    return [{names[id(p)] for p in group["params"]} for group in optimizer.param_groups]


class Recorder(pl.Callback):
    """Weights after each epoch and the optimiser's LRs at each epoch start; calls ``model.train()`` at epoch
    start, as code outside the fine-tuning callback may, to show the frozen batch norm is put back in eval."""

    def __init__(self) -> None:
        self.states, self.lrs = {}, {}

    def on_train_epoch_start(self, trainer, pl_module):
        pl_module.train()
        self.lrs[trainer.current_epoch] = [g["lr"] for g in trainer.optimizers[0].param_groups]

    def on_train_epoch_end(self, trainer, pl_module):
        self.states[trainer.current_epoch] = snapshot(pl_module)


class Snapshots(pl.Callback):
    """Weights after each epoch, touching no module's mode."""

    def __init__(self) -> None:
        self.states = {}

    def on_train_epoch_end(self, trainer, pl_module):
        self.states[trainer.current_epoch] = snapshot(pl_module)


class SaveAt(pl.Callback):
    def __init__(self, epoch: int, path) -> None:
        self.epoch, self.path = epoch, path

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            trainer.save_checkpoint(self.path)


def test_stage1_freezes_backbone_and_bn_stats_then_stage2_trains_exactly_layer4(tmp_path):
    model, recorder = module("cosine"), Recorder()
    initial = snapshot(model)
    staged = StagedFineTuning(stage2_epoch=2, unfreeze_depth=1, backbone_lr=BACKBONE_LR)
    trainer = fit(model, [staged, recorder], max_epochs=3, tmp_path=tmp_path)

    head = param_names(model, ("head.",))
    for epoch in (0, 1):  # stage 1: every backbone tensor, running statistics included, bit-for-bit unchanged
        assert changed(initial, recorder.states[epoch]) == head
    assert changed(recorder.states[1], recorder.states[2]) == head | param_names(model, ("backbone.layer4.",))
    assert group_names(model, trainer.optimizers[0]) == [head, param_names(model, ("backbone.layer4.",))]
    assert all(p.requires_grad for g in trainer.optimizers[0].param_groups for p in g["params"])
    # the backbone group joins the cosine schedule (T_max = 3) where it stands: factor (1 + cos(2 pi / 3)) / 2
    factor = (1 + math.cos(2 * math.pi / 3)) / 2
    assert recorder.lrs[2] == pytest.approx([HEAD_LR * factor, BACKBONE_LR * factor])
    assert trainer.lr_scheduler_configs[0].scheduler.base_lrs == [HEAD_LR, BACKBONE_LR]


def test_warmup_cosine_warms_the_backbone_group_up_from_the_step_it_joins(tmp_path):
    # 4 epochs of 2 steps; warm-up 1 epoch (2 steps); stage 2 joins at epoch 2 = step 4; total 8 steps
    model, recorder = module("warmup_cosine", warmup_epochs=1.0, max_epochs=4), StepLRs()
    staged = StagedFineTuning(stage2_epoch=2, unfreeze_depth=1, backbone_lr=BACKBONE_LR)
    fit(
        model,
        [staged, recorder],
        max_epochs=4,
        tmp_path=tmp_path,
        limit_train_batches=2,
        train_loader=loader(8),
    )

    def cosine(step):
        return (1 + math.cos(math.pi * step / 8)) / 2

    # head: warm-up 1/2, 2/2 over steps 0-1, then the cosine alone
    assert [lrs[0] for lrs in recorder.lrs] == pytest.approx(
        [HEAD_LR * min(1, (t + 1) / 2) * cosine(t) for t in range(8)]
    )
    # backbone: joins at step 4 at half its warmed-up LR, full at step 5, under the same cosine
    assert [lrs[1] for lrs in recorder.lrs[4:]] == pytest.approx(
        [BACKBONE_LR * min(1, (t - 3) / 2) * cosine(t) for t in range(4, 8)]
    )
    assert all(len(lrs) == 1 for lrs in recorder.lrs[:4])


class StepLRs(pl.Callback):
    """The optimiser's LRs at each training step, as used by that step."""

    def __init__(self) -> None:
        self.lrs = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.lrs.append([g["lr"] for g in trainer.optimizers[0].param_groups])


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_unfreeze_depth_trains_exactly_its_stages(tmp_path, depth):
    model = module()
    initial = snapshot(model)
    staged = StagedFineTuning(
        stage2_epoch=0, unfreeze_depth=depth, backbone_lr=BACKBONE_LR, freeze_bn_stats=False
    )
    trainer = fit(model, [staged], max_epochs=1, tmp_path=tmp_path)

    stages = tuple(f"backbone.{name}." for name in ResNet50Classifier.stage_names(depth))
    head, unfrozen = param_names(model, ("head.",)), param_names(model, stages)
    assert {n for n, p in model.network.named_parameters() if p.requires_grad} == head | unfrozen
    assert group_names(model, trainer.optimizers[0]) == [head, unfrozen]
    assert [g["lr"] for g in trainer.optimizers[0].param_groups] == [HEAD_LR, BACKBONE_LR]
    # without freeze_bn_stats the unfrozen stages' running statistics update too; nothing else moves
    buffers = {k for k in initial if k.startswith(stages) and k not in unfrozen}
    assert buffers and all(
        k.rsplit(".", 1)[1] in ("running_mean", "running_var", "num_batches_tracked") for k in buffers
    )
    assert changed(initial, snapshot(model)) == head | unfrozen | buffers


# the last k bottleneck blocks, written out (layer1: 3 blocks, layer2: 4, layer3: 6, layer4: 3)
LAST_BLOCKS = {
    1: ("layer4.2",),
    3: ("layer4.0", "layer4.1", "layer4.2"),
    4: ("layer3.5", "layer4.0", "layer4.1", "layer4.2"),
    9: tuple(f"layer3.{i}" for i in range(6)) + ("layer4.0", "layer4.1", "layer4.2"),
}


def trained_in_stage2(tmp_path, **unfreeze) -> tuple[ClassifierModule, pl.Trainer, dict]:
    """A module after one stage-2 epoch (without freeze_bn_stats), with its weights before it."""
    model = module()
    initial = snapshot(model)
    staged = StagedFineTuning(stage2_epoch=0, backbone_lr=BACKBONE_LR, freeze_bn_stats=False, **unfreeze)
    return model, fit(model, [staged], max_epochs=1, tmp_path=tmp_path), initial


@pytest.mark.parametrize("blocks", sorted(LAST_BLOCKS))
def test_unfreeze_blocks_trains_exactly_the_last_blocks(tmp_path, blocks):
    model, trainer, initial = trained_in_stage2(tmp_path, unfreeze_depth=2, unfreeze_blocks=blocks)

    prefixes = tuple(f"backbone.{name}." for name in LAST_BLOCKS[blocks])
    head, unfrozen = param_names(model, ("head.",)), param_names(model, prefixes)
    assert {n for n, p in model.network.named_parameters() if p.requires_grad} == head | unfrozen
    assert group_names(model, trainer.optimizers[0]) == [head, unfrozen]
    assert [g["lr"] for g in trainer.optimizers[0].param_groups] == [HEAD_LR, BACKBONE_LR]
    # the batch norm of exactly those blocks trains (its running statistics move); nothing else does
    buffers = {k for k in initial if k.startswith(prefixes) and k not in unfrozen}
    assert buffers and all(
        k.rsplit(".", 1)[1] in ("running_mean", "running_var", "num_batches_tracked") for k in buffers
    )
    assert changed(initial, snapshot(model)) == head | unfrozen | buffers


@pytest.mark.parametrize(("blocks", "depth"), [(3, 1), (9, 2), (16, 4)])
def test_unfreeze_blocks_of_whole_stages_train_what_the_depth_trains(tmp_path, blocks, depth):
    by_blocks, blocks_trainer, _ = trained_in_stage2(tmp_path, unfreeze_depth=1, unfreeze_blocks=blocks)
    by_depth, depth_trainer, _ = trained_in_stage2(tmp_path, unfreeze_depth=depth)
    assert group_names(by_blocks, blocks_trainer.optimizers[0]) == group_names(
        by_depth, depth_trainer.optimizers[0]
    )
    assert changed(snapshot(by_blocks), snapshot(by_depth)) == set()  # the same step, bit for bit


def test_unfreeze_blocks_with_frozen_bn_stats_keeps_every_running_statistic(tmp_path):
    model = module()
    initial = snapshot(model)
    staged = StagedFineTuning(stage2_epoch=0, unfreeze_depth=1, unfreeze_blocks=4, backbone_lr=BACKBONE_LR)
    fit(model, [staged], max_epochs=1, tmp_path=tmp_path)
    prefixes = tuple(f"backbone.{name}." for name in LAST_BLOCKS[4])
    assert changed(initial, snapshot(model)) == param_names(model, ("head.", *prefixes))


def test_without_freeze_bn_stats_the_unfrozen_statistics_update_after_a_frozen_first_stage(tmp_path):
    # stage 1 puts every batch norm in eval mode and Lightning keeps each submodule's mode across validation:
    # from stage 2 on, the unfrozen stage's batch norm must train again
    model, recorder = module(), Snapshots()
    staged = StagedFineTuning(
        stage2_epoch=1, unfreeze_depth=1, backbone_lr=BACKBONE_LR, freeze_bn_stats=False
    )
    fit(model, [staged, recorder], max_epochs=2, tmp_path=tmp_path, val_loader=loader())
    moved = changed(recorder.states[0], recorder.states[1])
    assert "backbone.layer4.0.bn1.running_mean" in moved
    assert not any(k.startswith("backbone.layer3.") for k in moved)


def test_stage2_after_last_epoch_never_unfreezes(tmp_path):
    model = module()
    initial = snapshot(model)
    trainer = fit(
        model,
        [StagedFineTuning(stage2_epoch=5, unfreeze_depth=2, backbone_lr=1e-4)],
        max_epochs=1,
        tmp_path=tmp_path,
    )
    assert changed(initial, snapshot(model)) == param_names(model, ("head.",))
    assert len(trainer.optimizers[0].param_groups) == 1


@pytest.mark.parametrize(
    ("blocks", "unfrozen"), [(0, ("backbone.layer4.",)), (4, ("backbone.layer3.5.", "backbone.layer4."))]
)
def test_resume_in_stage2_matches_an_uninterrupted_run(tmp_path, blocks, unfrozen):
    ckpt = tmp_path / "epoch1.ckpt"
    model = module("cosine")
    staged = StagedFineTuning(
        stage2_epoch=1, unfreeze_depth=1, unfreeze_blocks=blocks, backbone_lr=BACKBONE_LR
    )
    fit(model, [staged, SaveAt(1, ckpt)], max_epochs=3, tmp_path=tmp_path)

    resumed = module("cosine")
    staged = StagedFineTuning(
        stage2_epoch=1, unfreeze_depth=1, unfreeze_blocks=blocks, backbone_lr=BACKBONE_LR
    )
    trainer = fit(resumed, [staged], max_epochs=3, tmp_path=tmp_path, ckpt_path=ckpt)
    head, backbone = param_names(resumed, ("head.",)), param_names(resumed, unfrozen)
    assert group_names(resumed, trainer.optimizers[0]) == [head, backbone]
    assert changed(snapshot(model), snapshot(resumed)) == set()


def test_resume_with_another_depth_is_refused():
    staged = StagedFineTuning(stage2_epoch=1, unfreeze_depth=2, backbone_lr=1e-4)
    with pytest.raises(ValueError, match="unfreeze_depth=1; cannot resume it with unfreeze_depth=2"):
        staged.load_state_dict({"unfrozen": True, "unfreeze_depth": 1, "stage2_epoch": 1})


@pytest.mark.parametrize(
    ("saved", "blocks", "message"),
    [
        ({"unfreeze_blocks": 4}, 5, "unfreeze_blocks=4; cannot resume it with unfreeze_blocks=5"),
        ({"unfreeze_blocks": 4}, 0, "unfreeze_blocks=4; cannot resume it with unfreeze_depth=1"),
        ({"unfreeze_blocks": 0}, 3, "unfreeze_depth=1; cannot resume it with unfreeze_blocks=3"),
        ({}, 3, "unfreeze_depth=1; cannot resume it with unfreeze_blocks=3"),  # written before the option
    ],
)
def test_resume_with_other_blocks_is_refused(saved, blocks, message):
    staged = StagedFineTuning(stage2_epoch=1, unfreeze_depth=1, unfreeze_blocks=blocks, backbone_lr=1e-4)
    assert staged.state_dict()["unfreeze_blocks"] == blocks
    with pytest.raises(ValueError, match=message):
        staged.load_state_dict({"unfrozen": True, "unfreeze_depth": 1, "stage2_epoch": 1, **saved})


def test_resume_with_the_same_blocks_is_accepted_whatever_the_depth():
    saved = StagedFineTuning(stage2_epoch=1, unfreeze_depth=2, unfreeze_blocks=4, backbone_lr=1e-4)
    staged = StagedFineTuning(stage2_epoch=1, unfreeze_depth=1, unfreeze_blocks=4, backbone_lr=1e-4)
    staged.load_state_dict({**saved.state_dict(), "unfrozen": True})  # blocks > 0: the depth trains nothing


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"stage2_epoch": -1}, "stage2_epoch must be an integer >= 0, got -1"),
        ({"unfreeze_depth": 5}, r"unfreeze_depth must be an integer in 1..4, got 5"),
        ({"unfreeze_depth": 0}, r"unfreeze_depth must be an integer in 1..4, got 0"),
        ({"unfreeze_depth": 1.0}, r"unfreeze_depth must be an integer in 1..4, got 1.0"),
        ({"unfreeze_blocks": 17}, r"unfreeze_blocks must be an integer in 0..16 \(0: whole stages"),
        ({"unfreeze_blocks": -1}, r"unfreeze_blocks must be an integer in 0..16 .*, got -1"),
        ({"unfreeze_blocks": 2.0}, r"unfreeze_blocks must be an integer in 0..16 .*, got 2.0"),
        ({"backbone_lr": 0}, "backbone_lr must be a number > 0, got 0"),
    ],
)
def test_arguments_are_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        StagedFineTuning(**{"stage2_epoch": 1, "unfreeze_depth": 1, "backbone_lr": 1e-4, **kwargs})


def test_network_without_backbone_is_refused(tmp_path):
    model = ClassifierModule(network=PyTorchCNN(width=4, depth=2))
    with pytest.raises(ValueError, match="PyTorchCNN lacks"):
        fit(
            model,
            [StagedFineTuning(stage2_epoch=1, unfreeze_depth=1, backbone_lr=1e-4)],
            max_epochs=1,
            tmp_path=tmp_path,
        )
