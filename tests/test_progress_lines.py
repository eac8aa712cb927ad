"""Progress lines of long work outside the trials: the feature cache and scoring a large set."""

import numpy as np

from modules.progress_lines import ProgressLines


def test_lines_are_throttled_estimate_what_is_left_and_always_end():
    now = [0.0]
    lines = []
    p = ProgressLines("feature cache", unit="views", every_s=10, write=lines.append, clock=lambda: now[0])
    for done, t in ((10, 2.0), (20, 12.0), (30, 15.0), (40, 130.0)):
        now[0] = t
        p(done, 40)
    assert lines == [
        "feature cache: 20/40 views (50%), 12 s, about 12 s left",  # 10 at 2 s: too soon after the start
        "feature cache: 40/40 views (100%), 2 min 10 s, done",  # 30 at 15 s: too soon after the last line
    ]


def test_the_cache_build_reports_every_view_it_computes():
    import torch

    from modules.feature_cache import build_feature_cache
    from modules.networks import build_network
    from modules.transforms import Preprocessing

    torch.manual_seed(0)
    net = build_network("resnet50", weights="none")
    images = [np.random.default_rng(i).integers(0, 255, (40, 40), dtype=np.uint8) for i in range(5)]
    seen = []
    build_feature_cache(
        net,
        images,
        [0, 1, 0, 1, 0],
        ["train", "train", "train", "val", "test"],
        preprocessing=Preprocessing(image_size=32, resize=36),
        blocks=[],
        views=2,
        batch_size=4,
        progress=lambda done, total: seen.append((done, total)),
    )
    assert seen == [(4, 8), (6, 8), (8, 8)]  # 3 images x 2 views in batches of 4, then the 2 evaluation views
