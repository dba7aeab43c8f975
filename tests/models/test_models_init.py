"""Initialisation: glorot = Xavier-uniform weights + zero biases; builds are seed-deterministic."""

import math

import pytest
import torch
from torch import nn

from fedsqueeze.models import build_model

SHAPES = {
    "fc2": (1, 28, 28),
    "cnn": (1, 28, 28),
    "lenet5": (1, 28, 28),
    "mnistnet": (1, 28, 28),
    "cifar-cnn": (3, 32, 32),
    "resnet18": (3, 32, 32),
    "vgg16-gn": (3, 32, 32),
}
SMALL = ["fc2", "cnn", "lenet5", "mnistnet", "cifar-cnn"]


def _glorot_bound(weight: torch.Tensor) -> float:
    receptive = weight[0][0].numel() if weight.dim() > 2 else 1
    fan_in, fan_out = weight.shape[1] * receptive, weight.shape[0] * receptive
    return math.sqrt(6.0 / (fan_in + fan_out))


def _layers(model):
    return [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


@pytest.mark.parametrize("name", SMALL + ["vgg16-gn"])
def test_glorot_init_gives_zero_biases_and_weights_within_the_glorot_bound(name):
    torch.manual_seed(0)
    model = build_model(name, 10, SHAPES[name], init="glorot")
    layers = _layers(model)
    assert layers
    for layer in layers:
        bound = _glorot_bound(layer.weight)
        assert layer.weight.abs().max().item() <= bound
        # Uniform on [-b, b]: the spread reaches most of the bound (not a tiny default init).
        assert layer.weight.abs().max().item() > 0.5 * bound
        if layer.bias is not None:
            assert torch.count_nonzero(layer.bias) == 0


def test_glorot_fc2_weights_are_uniform_with_the_glorot_variance():
    torch.manual_seed(0)
    model = build_model("fc2", 10, (1, 28, 28), init="glorot")
    w = model[1].weight
    bound = math.sqrt(6.0 / (784 + 128))
    assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.02)


def test_default_init_keeps_pytorch_nonzero_biases():
    torch.manual_seed(0)
    model = build_model("fc2", 10, (1, 28, 28))
    assert torch.count_nonzero(model[1].bias) > 0


def test_glorot_leaves_groupnorm_affine_at_identity():
    model = build_model("vgg16-gn", 10, (3, 32, 32), init="glorot")
    for m in model.modules():
        if isinstance(m, nn.GroupNorm):
            assert torch.equal(m.weight, torch.ones_like(m.weight))
            assert torch.equal(m.bias, torch.zeros_like(m.bias))


@pytest.mark.parametrize("init", ["default", "glorot"])
@pytest.mark.parametrize("name", sorted(SHAPES))
def test_same_seed_builds_an_identical_state_dict(name, init):
    torch.manual_seed(1234)
    a = build_model(name, 10, SHAPES[name], init=init).state_dict()
    torch.manual_seed(1234)
    b = build_model(name, 10, SHAPES[name], init=init).state_dict()
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", SMALL)
def test_different_seeds_build_different_weights(name):
    torch.manual_seed(1)
    a = build_model(name, 10, SHAPES[name]).state_dict()
    torch.manual_seed(2)
    b = build_model(name, 10, SHAPES[name]).state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())
