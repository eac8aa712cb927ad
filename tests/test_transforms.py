"""Preprocessing options: the brain crop and the training jitter."""

import numpy as np
import pytest
import torch

from modules.transforms import Preprocessing, brain_box, build_transform, to_tensor
from tests.helpers import scan


def _framed(head: np.ndarray, canvas=(200, 300), at=(30, 170)) -> np.ndarray:
    """``head`` pasted into a black canvas at ``at``, plus a small bright label far from it."""
    img = np.zeros(canvas, np.uint8)
    y, x = at
    img[y : y + head.shape[0], x : x + head.shape[1]] = head
    img[185:190, 5:25] = 255  # a burnt-in label: 5 rows, 20 columns
    return img


def test_brain_box_finds_the_head_and_ignores_a_label():
    head = scan(7, size=96)  # a disc of radius ~40 px centred in a 96 px square
    img = _framed(head)
    top, bottom, left, right = brain_box(img)
    assert bottom - top == right - left  # square: the head keeps its aspect ratio
    # the disc (rows 30+8..30+88, cols 170+8..170+88) is inside, the label (rows 185-190, cols 5-25) is not
    assert top <= 38 and bottom >= 118 and left <= 178 and right >= 258
    assert right - left < 120 and left > 25
    assert top >= 0 and bottom <= 200 and left >= 0 and right <= 300


def test_brain_box_keeps_an_image_without_foreground_whole():
    assert brain_box(np.zeros((40, 60), np.uint8)) == (0, 40, 0, 60)


def test_a_bright_tumour_does_not_become_the_box():
    """A dim head with a small, very bright mass: the box frames the head, not the mass."""
    yy, xx = np.mgrid[:160, :160]
    img = np.where(np.hypot(yy - 80, xx - 80) < 60, 50, 0)
    img = np.where(np.hypot(yy - 60, xx - 100) < 12, 255, img).astype(np.uint8)
    top, bottom, left, right = brain_box(img)
    assert top <= 20 and bottom >= 140 and left <= 20 and right >= 140


def test_brain_crop_makes_the_evaluation_input_independent_of_the_framing():
    head = scan(11, size=96)
    pre = Preprocessing(image_size=64, resize=72, crop="brain")
    t = build_transform(pre, train=False)
    a = t(to_tensor(_framed(head, at=(30, 170))))
    b = t(to_tensor(_framed(head, at=(90, 20))))
    assert torch.allclose(a, b, atol=1e-4)
    plain = build_transform(Preprocessing(image_size=64, resize=72), train=False)
    assert not torch.allclose(
        plain(to_tensor(_framed(head, at=(30, 170)))), plain(to_tensor(_framed(head, at=(90, 20))))
    )


def test_training_jitter_changes_the_image_and_bad_values_are_refused():
    pre = Preprocessing(image_size=48, resize=56, rotation=0, hflip=False, intensity=0.3, scale=0.2)
    t = build_transform(pre, train=True)
    x = to_tensor(scan(3, size=64))
    torch.manual_seed(0)
    outs = [t(x) for _ in range(4)]
    assert outs[0].shape == (3, 48, 48)
    assert any(not torch.allclose(outs[0], o) for o in outs[1:])
    for bad, match in (
        ({"crop": "skull"}, "crop must be one of none, brain"),
        ({"intensity": 1.5}, "intensity"),
    ):
        with pytest.raises(ValueError, match=match):
            Preprocessing(**bad)
    assert Preprocessing.from_dict(pre.to_dict()) == pre
    # checkpoints written before these options existed still describe a valid preprocessing
    old = {k: v for k, v in Preprocessing().to_dict().items() if k not in ("crop", "intensity", "scale")}
    assert Preprocessing.from_dict(old).crop == "none"


def test_percentile_normalisation_gives_two_windowings_of_one_scan_the_same_input():
    """The same head shown at another brightness and contrast (another scanner's window) reaches the network
    at one contrast with intensity_norm="percentile", and does not without it; the background stays black."""
    from modules.transforms import normalize_intensity

    head = scan(5, size=96).astype(np.float32)
    inside = head > 0
    dim = np.where(inside, 20 + 0.4 * head, 0).astype(np.uint8)  # a flatter, darker window of one scan
    bright = np.where(inside, np.clip(30 + 0.9 * head, 0, 255), 0).astype(np.uint8)
    norm = Preprocessing(image_size=64, resize=72, intensity_norm="percentile")
    t_norm, t_plain = build_transform(norm, train=False), build_transform(Preprocessing(64, 72), train=False)
    a, b = t_norm(to_tensor(dim)), t_norm(to_tensor(bright))
    assert (a - b).abs().mean() < 0.05, (a - b).abs().mean()
    assert (t_plain(to_tensor(dim)) - t_plain(to_tensor(bright))).abs().mean() > 0.3
    out = normalize_intensity(to_tensor(dim))[0].numpy()
    assert out[~inside].max() == 0 and out.max() == 255
    flat = np.full((32, 32), 77, np.uint8)  # no contrast to stretch: unchanged, no division by zero
    assert np.array_equal(normalize_intensity(to_tensor(flat))[0].numpy(), flat)
    with pytest.raises(ValueError, match="intensity_norm must be one of none, percentile, got 'zscore'"):
        Preprocessing(intensity_norm="zscore")
    assert Preprocessing.from_dict(norm.to_dict()) == norm
