"""A forward pass gives (batch, num_classes) logits, not probabilities."""

import pytest
import torch

from fedsqueeze.models import build_model

SMALL = [
    ("fc2", (1, 28, 28)),
    ("cnn", (1, 28, 28)),
    ("lenet5", (1, 28, 28)),
    ("mnistnet", (1, 28, 28)),
    ("cifar-cnn", (3, 32, 32)),
]


@pytest.mark.parametrize("name,in_shape", SMALL)
@pytest.mark.parametrize("num_classes", [10, 3])
def test_forward_gives_batch_by_num_classes_logits(name, in_shape, num_classes):
    torch.manual_seed(0)
    model = build_model(name, num_classes, in_shape).eval()
    x = torch.randn(4, *in_shape)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (4, num_classes)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name,in_shape", SMALL)
def test_outputs_are_logits_not_softmax(name, in_shape):
    torch.manual_seed(0)
    model = build_model(name, 10, in_shape).eval()
    with torch.no_grad():
        out = model(torch.randn(8, *in_shape) * 5)
    # A softmax head would give rows summing to one with no negative entries.
    assert not torch.allclose(out.sum(dim=1), torch.ones(8))
    assert (out < 0).any()


def test_resnet18_has_the_cifar_stem():
    model = build_model("resnet18", 10, (3, 32, 32))
    conv1 = model.conv1
    assert conv1.kernel_size == (3, 3) and conv1.stride == (1, 1) and conv1.padding == (1, 1)
    assert conv1.bias is None
    assert isinstance(model.maxpool, torch.nn.Identity)
    assert model.fc.out_features == 10


@pytest.mark.parametrize("name,in_shape,batch", [("resnet18", (3, 8, 8), 2),
                                                ("vgg16-gn", (3, 32, 32), 1)])
def test_a_large_model_runs_forward_on_a_tiny_batch(name, in_shape, batch):
    torch.manual_seed(0)
    model = build_model(name, 10, in_shape).eval()
    with torch.no_grad():
        assert model(torch.randn(batch, *in_shape)).shape == (batch, 10)


def test_vgg16_gn_uses_groupnorm_after_each_of_13_convs_and_no_batchnorm():
    model = build_model("vgg16-gn", 10, (3, 32, 32))
    mods = list(model.modules())
    convs = [m for m in mods if isinstance(m, torch.nn.Conv2d)]
    norms = [m for m in mods if isinstance(m, torch.nn.GroupNorm)]
    assert len(convs) == 13 and len(norms) == 13
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)
    assert all(n.num_groups == 32 and n.affine for n in norms)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in mods)
    linears = [m for m in mods if isinstance(m, torch.nn.Linear)]
    assert [(l.in_features, l.out_features) for l in linears] == [(512, 512), (512, 512), (512, 10)]


def test_models_accept_the_channel_count_of_in_shape():
    torch.manual_seed(0)
    model = build_model("cnn", 10, (3, 28, 28)).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 28, 28)).shape == (2, 10)
