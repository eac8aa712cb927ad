"""Grad-CAM (Selvaraju et al., 2017) with plain PyTorch hooks: where in the image the evidence for a class lies.

The activations ``A`` (C, h, w) of a target layer are weighted by the spatial mean of the class score's
gradient with respect to them; the ReLU of the weighted channel sum is the map, upsampled to the input size.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from modules.networks import PyTorchCNN, ResNet50Classifier
from modules.transforms import Preprocessing, brain_box


def default_target_layer(network: nn.Module) -> nn.Module:
    """The layer whose activations Grad-CAM uses: the last conv block's activation (its ReLU, before pooling)
    of a ``PyTorchCNN``, ``backbone.layer4`` of a ``ResNet50Classifier``."""
    if isinstance(network, ResNet50Classifier):
        return network.backbone.layer4
    if isinstance(network, PyTorchCNN):
        return [m for m in network.features if isinstance(m, nn.ReLU)][-1]
    raise ValueError(
        f"no default Grad-CAM layer for a {type(network).__name__}; expected a PyTorchCNN or a "
        "ResNet50Classifier, or pass target_layer explicitly"
    )


def grad_cam(
    network: nn.Module, input: torch.Tensor, target_layer: nn.Module, class_index: int
) -> np.ndarray:
    """Grad-CAM map of ``class_index`` for one image.

    ``input``: (1, 3, H, W) float, as the network takes it. ``target_layer``: a submodule of ``network`` with a
    (1, C, h, w) output. Returns an (H, W) float32 array in [0, 1] (1 at the strongest evidence; all zeros when
    no location raises the class score), bilinearly upsampled from (h, w). The network is run as it is (call
    ``.eval()`` first for batch-norm and dropout in inference mode); its parameters are not changed.
    """
    if input.ndim != 4 or input.shape[0] != 1:
        raise ValueError(f"expected one image of shape (1, C, H, W), got {tuple(input.shape)}")
    captured: list[torch.Tensor] = []
    handle = target_layer.register_forward_hook(lambda _m, _i, output: captured.append(output))
    try:
        with torch.enable_grad():
            # a leaf that needs a gradient makes the graph exist even when every parameter is frozen
            x = input.detach().clone().requires_grad_(True)
            logits = network(x)
            if not 0 <= class_index < logits.shape[1]:
                raise ValueError(f"class_index {class_index} out of range for {logits.shape[1]} classes")
            if not captured:
                raise ValueError(
                    "target_layer did not run in the forward pass; expected a submodule of network"
                )
            activations = captured[-1]
            (grads,) = torch.autograd.grad(logits[0, class_index], activations)
    finally:
        handle.remove()
    weights = grads.mean(dim=(2, 3), keepdim=True)  # (1, C, 1, 1)
    cam = F.relu((weights * activations).sum(dim=1, keepdim=True)).detach()  # (1, 1, h, w)
    cam = F.interpolate(cam.float(), size=input.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    peak = float(cam.max())
    cam = cam / peak if peak > 0 else torch.zeros_like(cam)
    return cam.clamp_(0.0, 1.0).cpu().numpy().astype(np.float32)


def to_image_geometry(
    cam: np.ndarray,
    pre: Preprocessing,
    height: int,
    width: int,
    box: tuple[int, int, int, int] | None = None,
) -> np.ndarray:
    """Map a map over the network input back onto the original (height, width) image.

    The evaluation transform resizes the image (or, with ``pre.crop == "brain"``, the part inside ``box``:
    top, bottom, left, right in the original image's pixels) to ``pre.resize`` squared and centre-crops
    ``pre.image_size``; this undoes all three: the map is placed at the crop's position in the resized square
    (zero over the border the network never saw), that square is resized to the box, and the box placed in
    the image (zero outside it). Returns (height, width) float32.
    """
    size = pre.image_size
    if cam.shape != (size, size):
        raise ValueError(f"expected a ({size}, {size}) map over the network input, got {cam.shape}")
    top, bottom, left, right = box if box is not None else (0, height, 0, width)
    if not (0 <= top < bottom <= height and 0 <= left < right <= width):
        raise ValueError(f"box {box} does not lie inside a {height}x{width} image")
    offset = int(round((pre.resize - size) / 2.0))  # as torchvision's CenterCrop places the crop
    canvas = torch.zeros((1, 1, pre.resize, pre.resize), dtype=torch.float32)
    canvas[0, 0, offset : offset + size, offset : offset + size] = torch.from_numpy(
        np.asarray(cam, dtype=np.float32)
    )
    inside = F.interpolate(
        canvas, size=(bottom - top, right - left), mode="bilinear", align_corners=False, antialias=True
    )[0, 0]
    out = torch.zeros((height, width), dtype=torch.float32)
    out[top:bottom, left:right] = inside
    return out.clamp_(0.0, 1.0).numpy()


def crop_box_in(pixels_shape: tuple[int, int], shown: np.ndarray, pre: Preprocessing):
    """The brain-crop box of ``shown`` (the array the network saw) in the coordinates of the original image of
    shape ``pixels_shape`` (``shown`` may be a downscaled copy); None without ``crop="brain"``."""
    if pre.crop != "brain":
        return None
    top, bottom, left, right = brain_box(shown)
    fy, fx = pixels_shape[0] / shown.shape[0], pixels_shape[1] / shown.shape[1]
    box = (int(round(top * fy)), int(round(bottom * fy)), int(round(left * fx)), int(round(right * fx)))
    return (
        min(box[0], pixels_shape[0] - 1),
        max(box[1], min(box[0], pixels_shape[0] - 1) + 1),
        min(box[2], pixels_shape[1] - 1),
        max(box[3], min(box[2], pixels_shape[1] - 1) + 1),
    )
