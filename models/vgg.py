"""VGG networks with GroupNorm, as used by FedPara on CIFAR."""

from __future__ import annotations

from torch import nn

from .registry import register_model, trace_spatial

VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)
GN_GROUPS = 32


@register_model("vgg16-gn")
def vgg16_gn(num_classes: int, in_shape: tuple[int, int, int]) -> nn.Module:
    """FedPara's VGG-16 with GroupNorm for CIFAR.

    Features: the 13 conv layers of configuration D, each Conv3x3 (padding 1, with bias) +
    GroupNorm(32 groups, affine) + ReLU, and 5 maxpools 2x2. Classifier: Dropout, Linear(F, 512),
    ReLU, Dropout, Linear(512, 512), ReLU, Linear(512, classes), where F = 512 at 32x32 inputs
    (512 * (H // 32) * (W // 32) in general). Inputs need H, W >= 32.

    15,253,578 parameters for CIFAR-10 and 15,299,748 for CIFAR-100 (the FedPara paper's
    15.254M and 15.300M).
    """
    c = in_shape[0]
    ops = []
    conv_i = pool_i = 0
    for v in VGG16_CFG:
        if v == "M":
            pool_i += 1
            ops.append((f"pool{pool_i}", 2, 2, 0))
        else:
            conv_i += 1
            ops.append((f"conv{conv_i}", 3, 1, 1))
    h, w = trace_spatial("vgg16-gn", in_shape, ops)

    layers: list[nn.Module] = []
    in_ch = c
    for v in VGG16_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            assert isinstance(v, int)
            layers += [nn.Conv2d(in_ch, v, 3, padding=1), nn.GroupNorm(GN_GROUPS, v), nn.ReLU()]
            in_ch = v
    return nn.Sequential(
        nn.Sequential(*layers),
        nn.Flatten(),
        nn.Dropout(),
        nn.Linear(512 * h * w, 512),
        nn.ReLU(),
        nn.Dropout(),
        nn.Linear(512, 512),
        nn.ReLU(),
        nn.Linear(512, num_classes),
    )
