"""ResNets from torchvision, with the CIFAR stem."""

from __future__ import annotations

from torch import nn

from .registry import register_model


@register_model("resnet18")
def resnet18(num_classes: int, in_shape: tuple[int, int, int]) -> nn.Module:
    """torchvision ResNet-18 with the CIFAR stem: conv1 3x3 stride 1 padding 1 without bias,
    maxpool replaced by Identity. 11,173,962 parameters at 3x32x32 with 10 classes.

    conv1 takes C input channels; the adaptive average pool accepts any H, W >= 1.
    """
    # imported here: torchvision.models pulls in torch._dynamo (seconds), which every other
    # model, and every ClientApp process that does not train a ResNet, can do without
    from torchvision.models import resnet18 as tv_resnet18

    model = tv_resnet18(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_shape[0], 64, kernel_size=3, stride=1, padding=1, bias=False)
    # torchvision initialises conv weights with Kaiming-normal (fan_out); keep the stem alike.
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()
    return model
