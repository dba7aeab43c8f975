"""FedPara (Hyeon-Woo et al., ICLR 2022): FedAvg over the factors of low-rank Hadamard layers.

The model changes, not the protocol: the method requires `model-transform = "fedpara"`
(`strategies/model_transform.py`, options `fedpara.gamma`, `fedpara.layers`, `fedpara.tanh`)
and is otherwise Flower's FedAvg with the dense codec in `fedpara.dtype`. Every other method
trains the same layers with `model-transform = "fedpara"` in run config.
"""

from __future__ import annotations

from fedsqueeze.strategies.base import Method
from fedsqueeze.strategies.model_codec import DenseModelCodec
from fedsqueeze.strategies.model_transform import FedParaConfig
from fedsqueeze.strategies.registry import register


@register("fedpara")
class FedPara(Method):
    Config = FedParaConfig
    model_transform = "fedpara"

    def model_codec(self) -> DenseModelCodec:
        return DenseModelCodec(self.config.dtype)
