"""Exact parameter counts of every registered model (the reference papers' figures)."""

import pytest

from fedsqueeze.models import build_model, count_parameters, model_names

MNIST = (1, 28, 28)
CIFAR = (3, 32, 32)


def _count(name, num_classes, in_shape):
    return count_parameters(build_model(name, num_classes, in_shape))


def test_fc2_has_exactly_118282_parameters():
    assert _count("fc2", 10, MNIST) == 118_282


def test_fc2_first_layer_takes_the_flattened_input():
    # 3*32*32 = 3072 inputs: 3072*128+128 + 128*128+128 + 128*10+10
    assert _count("fc2", 10, CIFAR) == 3072 * 128 + 128 + 16_512 + 1_290


def test_mlp_200_has_exactly_199210_parameters():
    assert _count("mlp-200", 10, MNIST) == 199_210


def test_cnn_has_exactly_582026_parameters():
    assert _count("cnn", 10, MNIST) == 582_026


def test_lenet5_has_exactly_61706_parameters():
    assert _count("lenet5", 10, MNIST) == 61_706


def test_mnistnet_has_exactly_261840_parameters():
    assert _count("mnistnet", 10, MNIST) == 261_840


def test_cifar_cnn_has_exactly_782006_parameters():
    assert _count("cifar-cnn", 10, CIFAR) == 782_006


def test_resnet18_cifar_has_exactly_11173962_parameters():
    assert _count("resnet18", 10, CIFAR) == 11_173_962


def test_resnet18_cifar100_has_exactly_11220132_parameters():
    assert _count("resnet18", 100, CIFAR) == 11_220_132


def test_vgg16_gn_cifar10_has_exactly_15253578_parameters_fedpara_15_254M():
    n = _count("vgg16-gn", 10, CIFAR)
    assert n == 15_253_578
    assert round(n / 1e6, 3) == 15.254


def test_vgg16_gn_cifar100_has_exactly_15299748_parameters_fedpara_15_300M():
    n = _count("vgg16-gn", 100, CIFAR)
    assert n == 15_299_748
    assert round(n / 1e6, 3) == 15.300


def test_every_registered_model_has_a_count_test():
    assert model_names() == sorted(
        ["fc2", "mlp-200", "cnn", "lenet5", "mnistnet", "cifar-cnn", "resnet18", "vgg16-gn"]
    )


@pytest.mark.parametrize("name,in_shape",
                         [("fc2", MNIST), ("mnistnet", MNIST), ("cifar-cnn", CIFAR)])
def test_only_the_last_layer_grows_with_the_number_of_classes(name, in_shape):
    # The last layer's fan-in times 90 extra classes, plus 90 biases.
    fan_in = {"fc2": 128, "mnistnet": 50, "cifar-cnn": 84}[name]
    assert _count(name, 100, in_shape) - _count(name, 10, in_shape) == 90 * (fan_in + 1)


def test_count_parameters_counts_only_trainable_parameters():
    model = build_model("fc2", 10, MNIST)
    model[1].weight.requires_grad_(False)
    assert count_parameters(model) == 118_282 - 784 * 128
