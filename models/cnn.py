"""Small convolutional networks from the reference papers.

Every model takes ``C`` input channels from ``in_shape`` and sizes its first fully connected
layer from the (H, W) that reaches it, so the documented counts hold at the documented shape.
Shapes whose feature maps would vanish are rejected at build time.
"""

from __future__ import annotations

from torch import nn

from .mlp import dense_layers
from .registry import register_model, trace_spatial


@register_model("cnn")
def cnn(num_classes: int, in_shape: tuple[int, int, int]) -> nn.Module:
    """GWPF's MNIST CNN: conv5x5 C->32, ReLU, maxpool 2, conv5x5 32->64, ReLU, maxpool 2,
    fc ->512, ReLU, fc 512->classes (no padding). 582,026 parameters at 1x28x28, 10 classes.
    """
    c = in_shape[0]
    h, w = trace_spatial(
        "cnn",
        in_shape,
        [("conv1", 5, 1, 0), ("pool1", 2, 2, 0), ("conv2", 5, 1, 0), ("pool2", 2, 2, 0)],
    )
    return nn.Sequential(
        nn.Conv2d(c, 32, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * h * w, 512),
        nn.ReLU(),
        nn.Linear(512, num_classes),
    )


@register_model("lenet5")
def lenet5(num_classes: int, in_shape: tuple[int, int, int]) -> nn.Module:
    """ResFed's LeNet-5 for 28x28: conv5x5 C->6 pad 2, ReLU, maxpool 2, conv5x5 6->16, ReLU,
    maxpool 2, fc 400->120, ReLU, fc 120->84, ReLU, fc 84->classes.
    61,706 parameters at 1x28x28 with 10 classes.
    """
    c = in_shape[0]
    h, w = trace_spatial(
        "lenet5",
        in_shape,
        [("conv1", 5, 1, 2), ("pool1", 2, 2, 0), ("conv2", 5, 1, 0), ("pool2", 2, 2, 0)],
    )
    return nn.Sequential(
        nn.Conv2d(c, 6, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * h * w, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, num_classes),
    )


def _feddst_net(
    name: str, in_shape: tuple[int, int, int], num_classes: int,
    conv: tuple[int, int], hidden: tuple[int, ...],
) -> nn.Sequential:
    """FedDST's net shape: conv5x5, ReLU, maxpool 3 stride 1, conv5x5, ReLU, maxpool 3
    stride 1, then fully connected layers with ReLU between them; logits out (no softmax)."""
    c = in_shape[0]
    c1, c2 = conv
    h, w = trace_spatial(
        name,
        in_shape,
        [("conv1", 5, 1, 0), ("pool1", 3, 1, 0), ("conv2", 5, 1, 0), ("pool2", 3, 1, 0)],
    )
    return nn.Sequential(
        nn.Conv2d(c, c1, 5),
        nn.ReLU(),
        nn.MaxPool2d(3, stride=1),
        nn.Conv2d(c1, c2, 5),
        nn.ReLU(),
        nn.MaxPool2d(3, stride=1),
        nn.Flatten(),
        *dense_layers(c2 * h * w, hidden, num_classes),
    )


@register_model("mnistnet")
def mnistnet(num_classes: int, in_shape: tuple[int, int, int]) -> nn.Module:
    """FedDST's MNISTNet: conv5x5 C->10, maxpool 3/1, conv5x5 10->20, maxpool 3/1,
    fc 5120->50, fc 50->classes. 261,840 parameters at 1x28x28 with 10 classes.

    The reference ends in a softmax (a double softmax under CrossEntropyLoss); this one
    returns logits.
    """
    return _feddst_net("mnistnet", in_shape, num_classes, conv=(10, 20), hidden=(50,))


@register_model("cifar-cnn")
def cifar_cnn(num_classes: int, in_shape: tuple[int, int, int]) -> nn.Module:
    """FedDST's CIFAR10Net: conv5x5 C->6, maxpool 3/1, conv5x5 6->16, maxpool 3/1,
    fc 6400->120, fc 120->84, fc 84->classes. 782,006 parameters at 3x32x32 with 10 classes.
    """
    return _feddst_net("cifar-cnn", in_shape, num_classes, conv=(6, 16), hidden=(120, 84))
