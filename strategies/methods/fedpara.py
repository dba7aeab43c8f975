"""FedPara (Hyeon-Woo et al., ICLR 2022): FedAvg over the factors of low-rank Hadamard layers.

The model changes, not the protocol: the method requires `model-transform = "fedpara"`
(`strategies/model_transform.py`, options `fedpara.gamma`, `fedpara.layers`, `fedpara.tanh`)
and is otherwise Flower's FedAvg, the factors travelling as the run's channels code them.
Every other method trains the same layers with `model-transform = "fedpara"` in run config.
"""

from __future__ import annotations

from flwr.serverapp.strategy import FedAvg
from torch import nn

from fedsqueeze.strategies.base import Method, Tagged
from fedsqueeze.strategies.model_transform import FedParaConfig
from fedsqueeze.strategies.registry import register


class FedParaStrategy(Tagged, FedAvg):
    method_name = "fedpara"


@register("fedpara")
class FedPara(Method):
    Config = FedParaConfig
    model_transform = "fedpara"
    plain = True

    def strategy(self, model: nn.Module, **options) -> FedParaStrategy:
        return FedParaStrategy(**options)
