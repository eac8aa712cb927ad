"""Networks: CNN shapes and argument checks, ResNet50 stages, and every way weight loading can go right or wrong."""

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from modules import weights
from modules.networks import PyTorchCNN, ResNet50Classifier, build_network, depth_blocks
from modules.transforms import Preprocessing, build_transform
from modules.weights import WeightsError, calibrate_batch_norm, load_resnet50_weights, resolve_weights

REAL_WEIGHTS = Path(
    os.environ.get(
        "MRI_WEIGHTS", Path(__file__).resolve().parents[2] / "shared/weights/resnet50_imagenet.pth"
    )
)


class NotAStateDict:
    """An arbitrary class: pickling it works, ``torch.load(weights_only=True)`` must refuse it."""

    def __init__(self) -> None:
        self.payload = [1, 2, 3]


@pytest.fixture(scope="module")
def resnet() -> ResNet50Classifier:
    return ResNet50Classifier(num_classes=2, dropout=0.2)


@pytest.mark.parametrize(("depth", "size"), [(1, 2), (4, 16), (4, 37), (3, 64)])
def test_cnn_output_shape_for_any_size_from_two_to_the_depth(depth, size):
    net = PyTorchCNN(num_classes=3, in_channels=1, width=4, depth=depth, fc_hidden=8)
    assert net(torch.randn(2, 1, size, size)).shape == (2, 3)


def test_cnn_channels_double_and_cap_at_eight_times_width():
    net = PyTorchCNN(width=2, depth=6)
    convs = [m.out_channels for m in net.features if isinstance(m, nn.Conv2d)]
    assert convs == [2, 4, 8, 16, 16, 16]


def test_cnn_rejects_too_small_input():
    with pytest.raises(ValueError, match=r"at least 16 px"):
        PyTorchCNN(depth=4)(torch.randn(1, 3, 8, 8))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_classes": 1}, "num_classes must be an integer >= 2, got 1"),
        ({"depth": 0}, r"depth must be an integer in 1..8, got 0"),
        ({"width": 2.5}, "width must be an integer >= 1, got 2.5"),
        ({"dropout": 1.0}, r"dropout must be a probability in \[0, 1\), got 1.0"),
        ({"fc_dropout": -0.1}, "fc_dropout must be a probability"),
        ({"in_channels": True}, "in_channels must be an integer"),
    ],
)
def test_cnn_validates_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PyTorchCNN(**kwargs)


def test_resnet_forward_shape_and_head(resnet):
    resnet.eval()
    assert resnet(torch.randn(2, 3, 32, 32)).shape == (2, 2)
    assert isinstance(resnet.backbone.fc, nn.Identity)
    assert resnet.head[1].in_features == 2048


@pytest.mark.parametrize(
    ("depth", "names"),
    [
        (1, ("layer4",)),
        (2, ("layer3", "layer4")),
        (3, ("layer2", "layer3", "layer4")),
        (4, ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")),
    ],
)
def test_stage_modules_are_the_last_stages(resnet, depth, names):
    assert resnet.stage_names(depth) == names
    assert resnet.stage_modules(depth) == [getattr(resnet.backbone, n) for n in names]


def test_stage_modules_rejects_bad_depth(resnet):
    with pytest.raises(ValueError, match="in 1..4, got 5"):
        resnet.stage_modules(5)


@pytest.mark.parametrize(
    ("blocks", "names"),
    [
        (1, ("layer4.2",)),
        (2, ("layer4.1", "layer4.2")),
        (4, ("layer3.5", "layer4.0", "layer4.1", "layer4.2")),
        (14, ("layer1.2", *(f"layer2.{i}" for i in range(4)), *(f"layer3.{i}" for i in range(6)),
              "layer4.0", "layer4.1", "layer4.2")),
    ],
)  # fmt: skip
def test_block_modules_are_the_last_blocks_bottom_to_top(resnet, blocks, names):
    assert resnet.block_names(blocks) == names
    assert resnet.block_modules(blocks) == [getattr(resnet.backbone, n[:6])[int(n[7:])] for n in names]


@pytest.mark.parametrize(("depth", "blocks"), [(1, 3), (2, 9), (3, 13), (4, 16)])
def test_the_blocks_of_whole_stages_hold_exactly_their_parameters(resnet, depth, blocks):
    assert depth_blocks(depth) == blocks

    def params(modules):
        return [id(p) for m in modules for p in m.parameters()]

    assert params(resnet.block_modules(blocks)) == params(resnet.stage_modules(depth))


@pytest.mark.parametrize("blocks", [0, 17, 2.0])
def test_block_modules_rejects_bad_counts(resnet, blocks):
    with pytest.raises(ValueError, match=rf"unfreeze blocks must be an integer in 1..16, got {blocks!r}"):
        resnet.block_modules(blocks)


def test_build_network_kinds_and_errors():
    assert isinstance(build_network("cnn", width=4, depth=2), PyTorchCNN)
    model = build_network("resnet50", num_classes=3, weights="none", dropout=0.1)
    assert model.weights_source == "none" and model.head[1].out_features == 3
    with pytest.raises(ValueError, match="valid kinds: cnn, resnet50"):
        build_network("vgg")
    with pytest.raises(ValueError, match=r"got unknown \['lr'\]"):
        build_network("resnet50", weights="none", lr=0.1)


def test_none_keeps_random_init(resnet):
    before = resnet.backbone.conv1.weight.clone()
    assert load_resnet50_weights(resnet, "none") == "none"
    assert torch.equal(before, resnet.backbone.conv1.weight)


def test_real_weights_load(resnet):
    if not REAL_WEIGHTS.is_file():
        pytest.skip(f"real ResNet50 weights not found at {REAL_WEIGHTS} (set MRI_WEIGHTS)")
    source = load_resnet50_weights(resnet, str(REAL_WEIGHTS))
    state = torch.load(REAL_WEIGHTS, map_location="cpu", weights_only=True)
    assert source.startswith(f"file:{REAL_WEIGHTS.resolve()} sha256=") and len(source.split("=")[1]) == 12
    assert torch.equal(resnet.backbone.conv1.weight, state["conv1.weight"])
    assert torch.equal(resnet.backbone.layer4[2].bn3.running_var, state["layer4.2.bn3.running_var"])


def _backbone_state(prefix: str = "") -> dict[str, torch.Tensor]:
    """A complete backbone state_dict of 0.5s; expanded scalars keep the files written from it tiny."""
    return {prefix + k: torch.tensor(0.5).expand(shape) for k, shape in _SHAPES.items()}


_SHAPES = {k: v.shape for k, v in ResNet50Classifier().backbone.state_dict().items() if v.is_floating_point()}


@pytest.mark.parametrize("wrap", ["raw", "state_dict", "model", "module.backbone."])
def test_wrapped_and_prefixed_state_dicts_load(tmp_path, resnet, wrap):
    state = _backbone_state(wrap if wrap.endswith(".") else "")
    state["fc.weight"] = torch.zeros(1000, 2048)  # a classifier head of another task is ignored
    obj = {wrap: state, "epoch": 3} if wrap in ("state_dict", "model") else state
    torch.save(obj, tmp_path / "w.pt")
    assert load_resnet50_weights(resnet, tmp_path / "w.pt").startswith("file:")
    assert torch.equal(resnet.backbone.conv1.weight, torch.full((64, 3, 7, 7), 0.5))


def test_wrong_shape_names_the_mismatch(tmp_path, resnet):
    state = _backbone_state()
    state["conv1.weight"] = torch.zeros(64, 1, 7, 7)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(WeightsError, match=r"shape mismatch \(1\).*conv1.weight: file \(64, 1, 7, 7\)"):
        load_resnet50_weights(resnet, tmp_path / "bad.pt")


def test_missing_and_unexpected_keys_are_listed(tmp_path, resnet):
    state = _backbone_state()
    del state["layer4.2.conv3.weight"]
    state["extra.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "partial.pt")
    with pytest.raises(WeightsError, match=r"missing \(1\).*layer4.2.conv3.weight.*unexpected \(1\).*extra"):
        load_resnet50_weights(resnet, tmp_path / "partial.pt")


@pytest.mark.parametrize(
    ("write", "found"),
    [
        (lambda p: torch.save([torch.zeros(2)], p), "holds a list"),
        (lambda p: torch.save(torch.zeros(2), p), "holds a Tensor"),
        (lambda p: torch.save({"a": 1, "b": torch.zeros(1)}, p), r"non-tensor entries: \['a'\]"),
        (lambda p: torch.save({}, p), "holds a dict with keys"),
        (lambda p: p.write_bytes(os.urandom(4096)), "not a loadable PyTorch state_dict"),
        (lambda p: p.write_bytes(b""), "not a loadable PyTorch state_dict"),
        (lambda p: torch.save(NotAStateDict(), p), "weights_only=True failed: UnpicklingError"),
        (lambda p: p.write_bytes(pickle.dumps(NotAStateDict())), "not a loadable PyTorch state_dict"),
    ],
    ids=[
        "list",
        "tensor",
        "non-tensor",
        "empty",
        "random-bytes",
        "zero-bytes",
        "class-instance",
        "raw-pickle",
    ],
)
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_files_that_are_not_state_dicts_give_a_clear_error(tmp_path, resnet, write, found):
    path = tmp_path / "not_weights.pth"
    write(path)
    with pytest.raises(WeightsError, match=found) as info:
        load_resnet50_weights(resnet, path)
    assert str(path) in str(info.value)


def test_missing_file_and_directory(tmp_path, resnet):
    with pytest.raises(
        WeightsError, match=r"weights file not found: .*nope.pth \(expected 'imagenet', 'none'"
    ):
        load_resnet50_weights(resnet, tmp_path / "nope.pth")
    with pytest.raises(WeightsError, match="weights file not found"):
        load_resnet50_weights(resnet, tmp_path)


def test_imagenet_offline_says_where_the_cache_is_and_how_to_pass_a_file(monkeypatch, resnet):
    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(weights.ResNet50_Weights.IMAGENET1K_V2.__class__, "get_state_dict", offline)
    with pytest.raises(WeightsError) as info:
        load_resnet50_weights(resnet, "imagenet")
    message = str(info.value)
    assert "network unreachable" in message and torch.hub.get_dir() in message and "--weights PATH" in message


def test_imagenet_from_cache_is_loaded(monkeypatch, resnet):
    monkeypatch.setattr(
        weights.ResNet50_Weights.IMAGENET1K_V2.__class__, "get_state_dict", lambda *a, **k: _backbone_state()
    )
    assert load_resnet50_weights(resnet, "ImageNet") == "torchvision:IMAGENET1K_V2"
    assert torch.equal(resnet.backbone.bn1.weight, torch.full((64,), 0.5))


def test_the_v1_layout_moves_the_stride_to_the_first_1x1_conv():
    v15, v1 = ResNet50Classifier(layout="v1.5"), ResNet50Classifier(layout="v1")
    for name in ("layer2", "layer3", "layer4"):
        a, b = getattr(v15.backbone, name)[0], getattr(v1.backbone, name)[0]
        assert (a.conv1.stride, a.conv2.stride) == ((1, 1), (2, 2))
        assert (b.conv1.stride, b.conv2.stride) == ((2, 2), (1, 1))
        assert a.downsample[0].stride == b.downsample[0].stride == (2, 2)
    assert v1.backbone.layer1[0].conv1.stride == (1, 1)  # layer1 does not down-sample
    v1.load_state_dict(v15.state_dict())  # the same parameters: either layout loads the other's weights
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert v1.backbone(x).shape == v15.backbone(x).shape == (1, 2048)
        assert not torch.allclose(v1.backbone(x), v15.backbone(x))  # but they compute different features
    with pytest.raises(ValueError, match="unknown ResNet50 layout 'v2'"):
        ResNet50Classifier(layout="v2")


def test_a_checkpointed_layout_is_rebuilt(tmp_path):
    net = build_network("resnet50", num_classes=2, weights="none", layout="v1")
    assert net.layout == "v1" and net.backbone.layer3[0].conv1.stride == (2, 2)


def test_auto_layout_follows_the_weights():
    assert resolve_weights("none").layout_for("auto") == "v1.5"
    assert resolve_weights("none").layout_for("v1") == "v1"
    with pytest.raises(ValueError, match="weights_layout must be auto, v1 or v1.5"):
        resolve_weights("none").layout_for("v2")


@pytest.mark.realdata
@pytest.mark.skipif(not REAL_WEIGHTS.is_file(), reason="the shared ResNet50 weights file is absent")
def test_the_shared_weights_file_is_recognised_as_v1():
    state = resolve_weights(REAL_WEIGHTS)
    assert state.layout == "v1" and state.layout_for("auto") == "v1" and "MSRA" in state.provenance


def test_batch_norm_calibration_sets_the_statistics_of_the_images():
    torch.manual_seed(0)
    network = ResNet50Classifier(num_classes=2)
    images = [np.random.default_rng(i).integers(0, 255, (40, 40), dtype=np.uint8) for i in range(6)]
    transform = build_transform(Preprocessing(image_size=32, resize=36, crop="none"), train=False)
    calibrate_batch_norm(network, images, transform, batch_size=3)
    assert not network.training
    x = torch.stack([transform(torch.from_numpy(p)[None]) for p in images])
    with torch.no_grad():
        first = network.backbone.conv1(x)  # what bn1 normalises
    # torch's update_bn: the mean over the batches (two of 3 images) of each batch's statistics
    halves = (first[:3], first[3:])
    bn1 = network.backbone.bn1
    assert torch.allclose(bn1.running_mean, first.mean(dim=(0, 2, 3)), atol=1e-5)
    var = sum(h.var(dim=(0, 2, 3), unbiased=True) for h in halves) / 2
    assert torch.allclose(bn1.running_var, var, rtol=1e-4, atol=1e-6)
    assert bn1.momentum == 0.1  # the layers' own momentum is put back
    deep = network.backbone.layer4[-1].bn3
    assert not torch.allclose(deep.running_var, torch.ones_like(deep.running_var))
