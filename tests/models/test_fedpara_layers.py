"""FedPara's layers: the spec's parameter counts and ranks, He-init variance of the
synthesised W, full rank when R^2 >= min(m, n), factors (never W) in the state dict."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedsqueeze.models import build_model, count_parameters
from fedsqueeze.models.fedpara import (
    HadamardConv2d,
    HadamardLinear,
    conv_rank,
    fedpara_transform,
    is_local_factor,
    linear_rank,
)

MNIST, CIFAR = (1, 28, 28), (3, 32, 32)


def ranks(model: nn.Module) -> list[int]:
    return [m.rank for m in model.modules() if isinstance(m, (HadamardLinear, HadamardConv2d))]


@pytest.mark.parametrize("classes, gamma, expected", [(10, 0.1, 1.547), (100, 0.4, 4.532)])
def test_vgg16_gn_conv_layers_shrink_to_the_papers_sizes(classes, gamma, expected):
    model = fedpara_transform(build_model("vgg16-gn", classes, CIFAR), gamma, "conv")
    assert round(count_parameters(model) / 1e6, 3) == expected
    assert not any(isinstance(m, HadamardLinear) for m in model.modules())  # classifier kept


@pytest.mark.parametrize("name, count, expected_ranks", [("mlp-200", 120_986, [47, 33, 4]),
                                                         ("fc2", 74_650, [34, 22, 4])])
def test_mlps_at_gamma_half_have_the_specs_ranks_and_counts(name, count, expected_ranks):
    model = fedpara_transform(build_model(name, 10, MNIST), 0.5)  # auto: no conv -> linear
    assert ranks(model) == expected_ranks and count_parameters(model) == count


def test_rank_rule_ends():
    assert linear_rank(200, 784, 0.0) == 15 and linear_rank(200, 784, 1.0) == 79
    assert conv_rank(64, 64, 3, 0.0) == 8
    # r_max: the positive root of 9 R^2 + 128 R - 64 * 64 * 9 / 2 = 0 is 38.3
    assert conv_rank(64, 64, 3, 1.0) == 38


def _weights(layer, seeds=4):
    out = []
    for seed in range(seeds):
        torch.manual_seed(seed)
        layer.reset_parameters()
        out.append(layer.weight().detach().reshape(-1))
    return torch.cat(out)


@pytest.mark.parametrize("personal", [False, True])
def test_synthesised_weights_have_he_variance(personal):
    linear = HadamardLinear(784, 200, rank=47, personal=personal)
    assert abs(_weights(linear).var().item() / (2 / 784) - 1) < 0.1
    conv = HadamardConv2d(nn.Conv2d(64, 128, 3, padding=1), rank=conv_rank(128, 64, 3, 0.1),
                          personal=personal)
    assert abs(_weights(conv).var().item() / (2 / (64 * 9)) - 1) < 0.1


def test_naive_fan_in_factors_would_be_orders_of_magnitude_too_small():
    layer = HadamardLinear(784, 200, rank=47)
    with torch.no_grad():
        for p in (layer.x1, layer.y1, layer.x2, layer.y2):
            nn.init.kaiming_uniform_(p, a=5 ** 0.5)  # what nn.Linear does to its weight
    assert layer.weight().var().item() < 1e-2 * (2 / 784)  # over 100x too small


def test_full_rank_is_reachable_when_r_squared_covers_the_smaller_side():
    torch.manual_seed(0)
    layer = HadamardLinear(30, 20, rank=5)  # 25 >= min(30, 20); 5 < 20 so X1 Y1^T is rank 5
    w = layer.weight().detach().double()
    assert torch.linalg.matrix_rank(layer.x1.detach().double() @ layer.y1.detach().double().T) == 5
    assert torch.linalg.matrix_rank(w) == 20


def test_the_state_dict_holds_factors_and_biases_never_w():
    model = fedpara_transform(build_model("fc2", 10, MNIST), 0.5)
    keys = list(model.state_dict())
    assert not any(k.endswith("weight") for k in keys)
    assert {k.rsplit(".", 1)[1] for k in keys} == {"x1", "y1", "x2", "y2", "bias"}
    assert [k for k in keys if is_local_factor(k)] == [k for k in keys if k.endswith(("x2", "y2"))]


def test_a_transformed_model_trains():
    torch.manual_seed(0)
    model = fedpara_transform(build_model("cnn", 10, MNIST), 0.3, "all")
    x, y = torch.randn(32, *MNIST), torch.randint(0, 10, (32,))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0]
