"""Small convolutional networks from the reference papers.

Every model takes ``C`` input channels from ``in_shape`` and sizes its first fully connected
layer from the (H, W) that reaches it, so the documented counts hold at the documented shape.
Shapes whose feature maps would vanish are rejected at build time.
"""

from __future__ import annotations

from torch import nn

from .mlp import dense_layers
from .registry import register_model, trace_spatial


def _conv_net(
    name: str, in_shape: tuple[int, int, int], num_classes: int,
    convs: tuple[tuple[int, int], ...], pool: tuple[int, int], hidden: tuple[int, ...],
) -> nn.Sequential:
    """Per (out channels, padding) of `convs`: conv5x5, ReLU, maxpool (kernel, stride =
    `pool`); then Flatten, fully connected layers with ReLU between them, logits out."""
    channels, layers, trace = in_shape[0], [], []
    kernel, stride = pool
    for i, (out, padding) in enumerate(convs, 1):
        layers += [nn.Conv2d(channels, out, 5, padding=padding), nn.ReLU(),
                   nn.MaxPool2d(kernel, stride=stride)]
        trace += [(f"conv{i}", 5, 1, padding), (f"pool{i}", kernel, stride, 0)]
        channels = out
    h, w = trace_spatial(name, in_shape, trace)
    return nn.Sequential(*layers, nn.Flatten(),
                         *dense_layers(channels * h * w, hidden, num_classes))


@register_model("cnn")
def cnn(num_classes: int, in_shape: tuple[int, int, int]) -> nn.Module:
    """GWPF's MNIST CNN: conv5x5 C->32, ReLU, maxpool 2, conv5x5 32->64, ReLU, maxpool 2,
    fc ->512, ReLU, fc 512->classes (no padding). 582,026 parameters at 1x28x28, 10 classes.
    """
    return _conv_net("cnn", in_shape, num_classes, convs=((32, 0), (64, 0)), pool=(2, 2),
                     hidden=(512,))


@register_model("lenet5")
def lenet5(num_classes: int, in_shape: tuple[int, int, int]) -> nn.Module:
    """ResFed's LeNet-5 for 28x28: conv5x5 C->6 pad 2, ReLU, maxpool 2, conv5x5 6->16, ReLU,
    maxpool 2, fc 400->120, ReLU, fc 120->84, ReLU, fc 84->classes.
    61,706 parameters at 1x28x28 with 10 classes.
    """
    return _conv_net("lenet5", in_shape, num_classes, convs=((6, 2), (16, 0)), pool=(2, 2),
                     hidden=(120, 84))


@register_model("mnistnet")
def mnistnet(num_classes: int, in_shape: tuple[int, int, int]) -> nn.Module:
    """FedDST's MNISTNet: conv5x5 C->10, maxpool 3/1, conv5x5 10->20, maxpool 3/1,
    fc 5120->50, fc 50->classes. 261,840 parameters at 1x28x28 with 10 classes.

    The reference ends in a softmax (a double softmax under CrossEntropyLoss); this one
    returns logits.
    """
    return _conv_net("mnistnet", in_shape, num_classes, convs=((10, 0), (20, 0)),
                     pool=(3, 1), hidden=(50,))


@register_model("cifar-cnn")
def cifar_cnn(num_classes: int, in_shape: tuple[int, int, int]) -> nn.Module:
    """FedDST's CIFAR10Net: conv5x5 C->6, maxpool 3/1, conv5x5 6->16, maxpool 3/1,
    fc 6400->120, fc 120->84, fc 84->classes. 782,006 parameters at 3x32x32 with 10 classes.
    """
    return _conv_net("cifar-cnn", in_shape, num_classes, convs=((6, 0), (16, 0)),
                     pool=(3, 1), hidden=(120, 84))
