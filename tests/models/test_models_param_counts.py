"""Exact parameter counts of every registered model (the reference papers' figures)."""

import pytest

from fedsqueeze.models import build_model, count_parameters, model_names

MNIST = (1, 28, 28)
CIFAR = (3, 32, 32)


def _count(name, num_classes, in_shape):
    return count_parameters(build_model(name, num_classes, in_shape))


COUNTS = [  # (model, classes, input shape, parameters): each paper's figure
    ("fc2", 10, MNIST, 118_282),
    ("fc2", 10, CIFAR, 3072 * 128 + 128 + 16_512 + 1_290),  # the first layer takes 3*32*32
    ("mlp-200", 10, MNIST, 199_210),
    ("cnn", 10, MNIST, 582_026),
    ("lenet5", 10, MNIST, 61_706),
    ("mnistnet", 10, MNIST, 261_840),
    ("cifar-cnn", 10, CIFAR, 782_006),
    ("resnet18", 10, CIFAR, 11_173_962),
    ("resnet18", 100, CIFAR, 11_220_132),
    ("vgg16-gn", 10, CIFAR, 15_253_578),   # FedPara: 15.254M
    ("vgg16-gn", 100, CIFAR, 15_299_748),  # FedPara: 15.300M
]


@pytest.mark.parametrize("name,classes,in_shape,count", COUNTS)
def test_a_model_has_exactly_its_papers_parameter_count(name, classes, in_shape, count):
    assert _count(name, classes, in_shape) == count


def test_vgg16_gn_counts_round_to_fedparas_figures():
    assert [round(_count("vgg16-gn", c, CIFAR) / 1e6, 3) for c in (10, 100)] == [15.254, 15.3]


def test_every_registered_model_has_a_count_test():
    assert model_names() == sorted({name for name, *_ in COUNTS})


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
