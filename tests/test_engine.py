"""The engine trains on the feature cache exactly when the cache holds the cut below the blocks a run unfreezes
(by ``unfreeze_depth`` or ``unfreeze_blocks``), and a search's cache holds the cuts its space can sample."""

import pytest

from modules.cached_training import CachedDataModule, CachedTail
from modules.datamodule import MRIDataModule
from modules.dataset import prepare_data
from modules.feature_cache import build_feature_cache
from modules.networks import ResNet50Classifier, build_network
from modules.phantom import make_phantom
from tuning import engine
from tuning.backbone import base_config, needed_cuts
from tuning.config import TrainConfig
from tuning.settings import SearchSettings

CFG = {"weights": "none", "image_size": 32, "resize": 36, "crop": "none", "max_epochs": 4, "stage2_epoch": 1}


@pytest.fixture(scope="module")
def trial_data(tmp_path_factory):
    phantom = make_phantom(tmp_path_factory.mktemp("p"), n_per_class=6, size=48, seed=1)
    return prepare_data(phantom, synthetic=True).trial_data()


@pytest.fixture(scope="module")
def cache(trial_data):
    """A cache with the cuts below the last 3 blocks (unfreeze depth 1) and the last 4, as a search builds it."""
    cfg = TrainConfig.from_dict(CFG)
    td = trial_data
    built = build_feature_cache(
        build_network("resnet50", weights="none"),
        td.images,
        td.targets,
        td.splits,
        preprocessing=cfg.preprocessing,
        blocks=[3, 4],
        views=1,
    )
    built.info.update(preprocessing=cfg.preprocessing.to_dict(), weights_layout=cfg.weights_layout)
    return built


@pytest.mark.parametrize(
    ("unfreeze", "blocks"),
    [
        ({"unfreeze_depth": 1}, 3),
        ({"unfreeze_blocks": 4}, 4),
        ({"unfreeze_blocks": 3, "unfreeze_depth": 2}, 3),  # blocks take precedence over the depth
        ({"unfreeze_blocks": 4, "unfreeze_depth": 3}, 4),
    ],
)
def test_a_run_trains_on_the_cut_below_the_blocks_it_unfreezes(trial_data, cache, unfreeze, blocks):
    cfg = TrainConfig.from_dict({**CFG, **unfreeze})
    assert cfg.trainable_blocks == blocks
    module, _, datamodule, cached = engine.build_run(cfg, trial_data, cache=cache)
    assert cached and isinstance(module.network, CachedTail) and module.network.blocks == blocks
    assert isinstance(datamodule, CachedDataModule) and datamodule.blocks == blocks
    (staged,) = engine.staging_callbacks(cfg)
    assert (staged.unfreeze_depth, staged.unfreeze_blocks) == (cfg.unfreeze_depth, cfg.unfreeze_blocks)


@pytest.mark.parametrize(
    "unfreeze",
    [{"unfreeze_depth": 2}, {"unfreeze_blocks": 5}, {"unfreeze_blocks": 9}, {"unfreeze_blocks": 16}],
)
def test_a_run_whose_cut_the_cache_lacks_trains_on_the_images(trial_data, cache, unfreeze):
    cfg = TrainConfig.from_dict({**CFG, **unfreeze})
    module, _, datamodule, cached = engine.build_run(cfg, trial_data, cache=cache)
    assert not cached and isinstance(module.network, ResNet50Classifier)
    assert isinstance(datamodule, MRIDataModule)


def test_a_run_that_never_unfreezes_needs_no_cut(cache):
    cfg = TrainConfig.from_dict({**CFG, "unfreeze_blocks": 5, "stage2_epoch": 4})
    assert engine.cache_fits(cache, cfg)


@pytest.mark.parametrize(
    ("space", "cuts"),
    [
        ("resnet_stage2", {3, 9}),  # unfreeze depths 1 and 2
        ("resnet_stage2_blocks", {1, 2, 3, 5, 7, 9}),
        ("resnet_stage1", set()),  # never unfreezes
    ],
)
def test_a_search_caches_the_cuts_its_space_can_sample(space, cuts):
    s = SearchSettings(space=space, max_epochs=6, grace_period=4)
    spec = s.spec()
    assert needed_cuts(spec, base_config(s, spec), s.max_epochs) == cuts


@pytest.mark.parametrize(
    ("spec", "cuts"),
    [
        ({"unfreeze_blocks": {"choice": [0, 4]}, "unfreeze_depth": {"choice": [1, 2]}}, {3, 4, 9}),
        ({"unfreeze_blocks": {"randint": [1, 4]}}, {1, 2, 3}),  # randint's high is exclusive
        ({"unfreeze_depth": {"randint": [1, 3]}}, {3, 9}),
        ({"unfreeze_blocks": 6, "unfreeze_depth": {"choice": [1, 2]}}, {6}),  # no trial unfreezes by depth
        ({"unfreeze_blocks": {"choice": [2, 3]}, "stage2_epoch": 6}, set()),
    ],
)
def test_the_cuts_follow_sampled_blocks_and_depths(spec, cuts):
    assert needed_cuts(spec, TrainConfig(), 6) == cuts
