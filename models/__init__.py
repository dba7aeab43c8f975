"""fedsqueeze.models: PyTorch models by name.

    build_model(name, num_classes, in_shape=(C, H, W), init="default"|"glorot") -> nn.Module
    model_names() -> list[str]
    count_parameters(model) -> int            # trainable parameters
    @register_model("name")                    # factory(num_classes, in_shape) -> nn.Module
    ModelError(ValueError)

Registered: fc2, mlp-200, cnn, lenet5, mnistnet, cifar-cnn, resnet18, vgg16-gn.
Low-rank Hadamard (FedPara) layers and the transform: `fedsqueeze.models.fedpara`.
"""

# Importing the family modules registers their models.
from . import cnn as _cnn  # noqa: F401,E402
from . import mlp as _mlp  # noqa: F401,E402
from . import resnet as _resnet  # noqa: F401,E402
from . import vgg as _vgg  # noqa: F401,E402
from .registry import ModelError, build_model, count_parameters, model_names, register_model

__all__ = ["ModelError", "build_model", "count_parameters", "model_names", "register_model"]
