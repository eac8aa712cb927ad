"""The feature cache: the cached path computes what the plain path computes, and is built once."""

import json

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from modules.cached_training import CachedDataModule, CachedTail
from modules.dataset import prepare_data
from modules.feature_cache import CacheTooLarge, build_feature_cache, cut_after, cut_shape, estimate_bytes
from modules.finetune import StagedFineTuning
from modules.lit_module import ClassifierModule
from modules.networks import ResNet50Classifier, depth_blocks
from modules.phantom import make_phantom
from modules.transforms import Preprocessing, build_transform, to_tensor
from tests.helpers import TINY_SEARCH as TINY
from tuning import search
from tuning.cli import run_main

PRE = Preprocessing(image_size=64, resize=72)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return prepare_data(
        make_phantom(tmp_path_factory.mktemp("p"), n_per_class=12, size=72, seed=2), synthetic=True
    )


def _network(seed=0, layout="v1.5"):
    torch.manual_seed(seed)
    net = ResNet50Classifier(num_classes=2, dropout=0.2, layout=layout)
    for m in net.modules():  # non-trivial batch-norm statistics, as pretrained weights have
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return net.eval()


@pytest.mark.parametrize("precision,tolerance", [("32", 1e-3), ("bf16", 3e-2)])
def test_cached_outputs_equal_the_full_network(data, precision, tolerance):
    """float32 cache: equal to float16 storage rounding; bf16 cache: to bf16 rounding (both vs the float32
    network). Tolerance: the largest logit error as a fraction of the largest logit."""
    net = _network()
    td = data.trial_data()
    cache = build_feature_cache(
        net,
        td.images,
        td.targets,
        td.splits,
        preprocessing=PRE,
        blocks=[3, 9, 13],  # the cuts of unfreeze depths 1, 2, 3
        views=2,
        precision=precision,
    )
    assert cache.info["precision"] == precision
    val = [i for i, s in enumerate(td.splits) if s == "val"]
    x = torch.stack([build_transform(PRE, train=False)(to_tensor(td.images[i])) for i in val])
    with torch.no_grad():
        full = net(x)
        pooled = torch.from_numpy(cache.pooled["val"][:, 0].astype(np.float32))
        scale = full.abs().max()
        assert (CachedTail(net, 3)(pooled) - full).abs().max() <= tolerance * scale
        for depth in (1, 2, 3):
            cut = torch.from_numpy(cache.cut[depth_blocks(depth)]["val"][:, 0].astype(np.float32))
            assert (CachedTail(net, depth_blocks(depth))(cut) - full).abs().max() <= tolerance * scale, depth
    assert cache.pooled["train"].shape[1] == 2 and cache.cut[3]["train"].shape[2:] == (1024, 4, 4)
    assert not np.array_equal(cache.pooled["train"][:, 0], cache.pooled["train"][:, 1])  # two different views
    assert cache.nbytes == estimate_bytes(
        n_train=len(cache.targets["train"]),
        n_eval=len(val) + len(cache.targets["test"]),
        views=2,
        image_size=64,
        blocks=[3, 9, 13],
    )


@pytest.mark.parametrize("layout", ["v1.5", "v1"])
def test_a_cut_inside_a_stage_gives_the_full_networks_logits(data, layout):
    """The last 1 block (input: layer4[1]'s output, 2048 channels at stride 32) and the last 4 (input:
    layer3[4]'s, 1024 at stride 16), in both stride layouts; the estimate is what the arrays take."""
    net = _network(layout=layout)
    td = data.trial_data()
    cache = build_feature_cache(
        net, td.images, td.targets, td.splits, preprocessing=PRE, blocks=[1, 4], views=2
    )
    val = [i for i, s in enumerate(td.splits) if s == "val"]
    x = torch.stack([build_transform(PRE, train=False)(to_tensor(td.images[i])) for i in val])
    with torch.no_grad():
        full = net(x)
        for blocks in (1, 4):
            cut = torch.from_numpy(cache.cut[blocks]["val"][:, 0].astype(np.float32))
            tail = CachedTail(net, blocks)
            above = {1: ("layer4.2",), 4: ("layer3.5", "layer4.0", "layer4.1", "layer4.2")}
            assert tail.tail_names == above[blocks]
            assert (tail(cut) - full).abs().max() <= 1e-3 * full.abs().max(), blocks
    assert cache.blocks == (1, 4)
    assert cache.cut[1]["train"].shape[1:] == (2, 2048, 2, 2) == (2, *cut_shape(1, 64))
    assert cache.cut[4]["train"].shape[1:] == (2, 1024, 4, 4) == (2, *cut_shape(4, 64))
    assert cache.nbytes == estimate_bytes(
        n_train=len(cache.targets["train"]),
        n_eval=len(val) + len(cache.targets["test"]),
        views=2,
        image_size=64,
        blocks=[1, 4],
    )


@pytest.mark.parametrize(
    ("blocks", "block", "shape"),
    [
        (1, "layer4.1", (2048, 7, 7)),
        (2, "layer4.0", (2048, 7, 7)),
        (3, "layer3.5", (1024, 14, 14)),  # unfreeze depth 1
        (4, "layer3.4", (1024, 14, 14)),
        (9, "layer2.3", (512, 28, 28)),  # depth 2
        (10, "layer2.2", (512, 28, 28)),
        (13, "layer1.2", (256, 56, 56)),  # depth 3
        (15, "layer1.0", (256, 56, 56)),
    ],
)
def test_every_cut_is_the_input_of_the_first_unfrozen_block(blocks, block, shape):
    assert cut_after(blocks) == block and cut_shape(blocks, 224) == shape


@pytest.mark.parametrize("blocks", [0, 16, 17])
def test_blocks_without_a_cut_are_refused(blocks):
    with pytest.raises(ValueError, match=rf"no cut below the last {blocks} blocks; cuts exist for 1..15"):
        cut_after(blocks)
    with pytest.raises(ValueError, match="no cut below"):
        CachedTail(_network(), blocks)


def test_too_large_a_cache_is_refused_before_computing(data):
    td = data.trial_data()
    net = _network()

    def refuse(*args):
        raise AssertionError("the backbone ran before the size was checked")

    net.backbone.forward = refuse
    with pytest.raises(CacheTooLarge, match="over the limit"):
        build_feature_cache(
            net,
            td.images,
            td.targets,
            td.splits,
            preprocessing=PRE,
            blocks=[13],
            views=8,
            max_bytes=1000,
        )


def _fit_tail(net, cache, *, stage2_epoch: int, blocks: int = 0) -> pl.Trainer:
    """Two epochs of the cached tail of ``net`` (unfreeze depth 1: 3 blocks, or the last ``blocks``), staged as
    a trial stages them."""
    staged = StagedFineTuning(
        stage2_epoch=stage2_epoch, unfreeze_depth=1, unfreeze_blocks=blocks, backbone_lr=1e-2
    )
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        reload_dataloaders_every_n_epochs=1,
        callbacks=[staged],
    )
    dm = CachedDataModule(cache, blocks=blocks or 3, stage2_epoch=stage2_epoch, batch_size=8)
    trainer.fit(ClassifierModule(network=CachedTail(net, blocks or 3), lr=1e-2), datamodule=dm)
    return trainer


def test_cached_stage2_training_changes_only_the_tail(data):
    net = _network()
    td = data.trial_data()
    cache = build_feature_cache(net, td.images, td.targets, td.splits, preprocessing=PRE, blocks=[3], views=2)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    _fit_tail(net, cache, stage2_epoch=1)
    after = net.state_dict()
    changed = {k.split(".")[0] + "." + k.split(".")[1] for k in after if not torch.equal(before[k], after[k])}
    assert "backbone.layer4" in changed and "head.1" in changed
    assert not any(
        c.startswith(("backbone.layer1", "backbone.layer2", "backbone.layer3", "backbone.conv1"))
        for c in changed
    ), changed


def test_cached_stage2_training_of_the_last_blocks_changes_only_them(data):
    net = _network()
    td = data.trial_data()
    cache = build_feature_cache(net, td.images, td.targets, td.splits, preprocessing=PRE, blocks=[4], views=2)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    _fit_tail(net, cache, stage2_epoch=1, blocks=4)
    after = net.state_dict()
    changed = {".".join(k.split(".")[:3]) for k in after if not torch.equal(before[k], after[k])}
    assert changed == {"backbone.layer3.5", "backbone.layer4.0", "backbone.layer4.1", "backbone.layer4.2"} | {
        "head.1.weight",
        "head.1.bias",
    }


def test_search_builds_the_cache_once_and_every_trial_uses_it(ray_local, data, tmp_path, monkeypatch):
    """Also with preprocessing constants in the space (the cache is computed with them, so it serves)."""
    from search_spaces import get_spec

    space = tmp_path / "space.json"
    space.write_text(json.dumps({**get_spec("resnet_stage2"), "crop": "brain", "intensity": 0.1}))
    root = data.images.source
    from tuning import backbone, pipeline

    built, shared = [], []
    build, share = backbone.build_feature_cache, pipeline.share_cache
    monkeypatch.setattr(
        backbone, "build_feature_cache", lambda *a, **k: built.append(build(*a, **k)) or built[-1]
    )
    monkeypatch.setattr(pipeline, "share_cache", lambda s, c: shared.append(share(s, c)) or shared[-1])
    run = tmp_path / "run"
    args = [
        "--space",
        str(space),
        "--data",
        root,
        "--weights",
        "none",
        "--num-samples",
        "3",
        "--max-epochs",
        "4",
        "--grace-period",
        "4",
        "--cache-views",
        "2",
        "--out",
        str(run),
        *TINY,
    ]
    assert run_main(search.main, args) == 0
    assert len(built) == 1  # built once, in the driver; trials read it from the object store
    assert (
        len(shared) == 1 and not shared[0].local.train_pooled.flags.writeable
    )  # the driver kept the store's view
    report = json.loads((run / "report.json").read_text())
    cache = report["search"]["cache"]
    assert cache["enabled"] and cache["trials_on_cache"] == 3 and cache["cut_blocks"] == [3, 9]
    assert report["config"]["crop"] == "brain" and report["trained_on_feature_cache"] is True


def test_the_driver_keeps_the_object_stores_copy_of_the_cache_not_its_own(ray_local, data):
    """One copy of the arrays on the driver's machine: the driver refits on the store's zero-copy view, and the
    trials' reference is the one put, not a second put."""
    import ray

    from tuning.ray_runtime import share_cache
    from tuning.settings import SearchSettings

    net = _network()
    td = data.trial_data()
    built = build_feature_cache(net, td.images, td.targets, td.splits, preprocessing=PRE, blocks=[3], views=2)
    expected = built.train_cut[3].copy()
    stored = share_cache(SearchSettings(dashboard=False), built)
    view = stored.local
    assert view is not built and not view.train_cut[3].flags.writeable  # a view of the store's buffer
    np.testing.assert_array_equal(view.train_cut[3], expected)
    from_store = ray.get(stored.ref)  # what the trials read: the same arrays, zero-copy again
    assert not from_store.train_cut[3].flags.writeable
    np.testing.assert_array_equal(from_store.train_cut[3], expected)
    assert share_cache(SearchSettings(), None) is None


def test_a_pooled_only_cache_trains_stage1_and_refuses_a_stage2_it_cannot_serve(data):
    """The resnet_stage1 space never unfreezes: its cache holds pooled features only, and that is enough."""
    net = _network()
    td = data.trial_data()
    cache = build_feature_cache(net, td.images, td.targets, td.splits, preprocessing=PRE, blocks=[], views=2)
    assert cache.blocks == () and cache.nbytes == cache.train_pooled.nbytes + cache.eval_pooled.nbytes

    assert _fit_tail(net, cache, stage2_epoch=10_000).current_epoch == 2
    with pytest.raises(ValueError, match=r"holds only the cuts below the last \[\] blocks"):
        _fit_tail(net, cache, stage2_epoch=1)


def test_cached_loaders_draw_a_new_order_every_epoch_and_the_same_on_a_rerun(data):
    """The plain path reshuffles every epoch; the cached one rebuilds its loaders every epoch, so it seeds them
    by (seed, epoch): epochs differ, and a rerun of the same epoch repeats it."""
    from types import SimpleNamespace

    td = data.trial_data()
    cache = build_feature_cache(
        _network(), td.images, td.targets, td.splits, preprocessing=PRE, blocks=[], views=1
    )
    dm = CachedDataModule(cache, blocks=3, stage2_epoch=99, batch_size=4, seed=3)

    def order(epoch: int) -> list[int]:
        dm.trainer = SimpleNamespace(current_epoch=epoch)
        loader = dm.train_dataloader()
        return list(iter(loader.sampler))

    first, second = order(0), order(1)
    assert sorted(first) == sorted(second) == list(range(len(first)))
    assert first != second  # a new order in the next epoch
    assert order(0) == first and order(1) == second  # and the same order when the run is repeated
