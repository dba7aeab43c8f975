"""Registry behaviour and errors: every bad request is a ModelError raised at build time."""

import pytest
from torch import nn

from fedsqueeze.models import ModelError, build_model, model_names, register_model
from fedsqueeze.models import registry as _registry


def test_model_error_is_a_value_error():
    assert issubclass(ModelError, ValueError)


def test_model_names_lists_every_model_sorted():
    names = model_names()
    assert names == sorted(names)
    assert {"fc2", "cnn", "lenet5", "mnistnet", "cifar-cnn", "resnet18", "vgg16-gn"} <= set(names)


def test_unknown_model_raises_model_error_listing_the_valid_names():
    with pytest.raises(ModelError) as err:
        build_model("resnet9000", 10, (3, 32, 32))
    msg = str(err.value)
    assert "resnet9000" in msg
    for name in model_names():
        assert name in msg


def test_unknown_init_raises_model_error_naming_it():
    with pytest.raises(ModelError, match="kaiming-magic") as err:
        build_model("fc2", 10, (1, 28, 28), init="kaiming-magic")
    assert "glorot" in str(err.value) and "default" in str(err.value)


@pytest.mark.parametrize(
    "name,in_shape",
    [
        ("vgg16-gn", (1, 28, 28)),  # five 2x2 pools take 28 -> 0
        ("cifar-cnn", (3, 8, 8)),
        ("mnistnet", (1, 10, 10)),
        ("cnn", (1, 12, 12)),
        ("lenet5", (1, 8, 8)),
    ],
)
def test_a_model_that_cannot_take_the_input_shape_fails_at_build_time(name, in_shape):
    with pytest.raises(ModelError) as err:
        build_model(name, 10, in_shape)
    msg = str(err.value)
    assert name in msg and str(in_shape) in msg and "too small" in msg


@pytest.mark.parametrize(
    "in_shape", [(28, 28), (1, 28, 28, 1), (0, 28, 28), (1, -1, 28), (1, 28.0, 28), None]
)
def test_malformed_in_shape_raises_model_error(in_shape):
    with pytest.raises(ModelError, match="in_shape"):
        build_model("fc2", 10, in_shape)


@pytest.mark.parametrize("num_classes", [0, -3, 2.5, True])
def test_bad_num_classes_raises_model_error(num_classes):
    with pytest.raises(ModelError, match="num_classes"):
        build_model("fc2", num_classes, (1, 28, 28))


def test_in_shape_may_be_a_list():
    assert build_model("fc2", 10, [1, 28, 28]) is not None


def test_register_model_adds_a_buildable_name_and_rejects_duplicates(monkeypatch):
    monkeypatch.setattr(_registry, "_REGISTRY", dict(_registry._REGISTRY))

    @register_model("tiny-test-model")
    def _tiny(num_classes, in_shape):
        return nn.Sequential(nn.Flatten(),
                             nn.Linear(in_shape[0] * in_shape[1] * in_shape[2], num_classes))

    assert "tiny-test-model" in model_names()
    assert build_model("tiny-test-model", 4, (1, 2, 2))[1].out_features == 4
    with pytest.raises(ModelError, match="already registered"):
        register_model("tiny-test-model")(_tiny)
