"""Multilayer perceptrons."""

from __future__ import annotations

from torch import nn

from .registry import register_model


def _mlp(in_shape: tuple[int, int, int], hidden: tuple[int, ...], num_classes: int
         ) -> nn.Sequential:
    """Flatten, then Linear + ReLU per hidden width, then Linear to the classes. The first
    layer takes the flattened input, so any (C, H, W) works."""
    c, h, w = in_shape
    return nn.Sequential(nn.Flatten(), *dense_layers(c * h * w, hidden, num_classes))


def dense_layers(width: int, hidden: tuple[int, ...], num_classes: int) -> list[nn.Module]:
    """Linear + ReLU per hidden width from `width` inputs, then Linear to the classes."""
    layers: list[nn.Module] = []
    for hid in hidden:
        layers += [nn.Linear(width, hid), nn.ReLU()]
        width = hid
    return [*layers, nn.Linear(width, num_classes)]


@register_model("fc2")
def fc2(num_classes: int, in_shape: tuple[int, int, int]) -> nn.Module:
    """FedSparsify's FC-2: Flatten, Linear(C*H*W, 128), ReLU, Linear(128, 128), ReLU,
    Linear(128, classes). 118,282 parameters at 1x28x28 with 10 classes."""
    return _mlp(in_shape, (128, 128), num_classes)


@register_model("mlp-200")
def mlp_200(num_classes: int, in_shape: tuple[int, int, int]) -> nn.Module:
    """pFedPara's FC network: Flatten, Linear(C*H*W, 200), ReLU, Linear(200, 200), ReLU,
    Linear(200, classes). 199,210 parameters at 1x28x28 with 10 classes."""
    return _mlp(in_shape, (200, 200), num_classes)
