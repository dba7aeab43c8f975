"""FedAvg (McMahan et al., 2017): the baseline, Flower's own strategy. The model travels as the
run's channels code it (`uplink`, `downlink`; dense fp32 both ways by default)."""

from __future__ import annotations

from flwr.serverapp.strategy import FedAvg as FlowerFedAvg
from torch import nn

from fedsqueeze.strategies.base import Method, Tagged
from fedsqueeze.strategies.registry import register


class FedAvgStrategy(Tagged, FlowerFedAvg):
    method_name = "fedavg"


@register("fedavg")
class FedAvg(Method):
    plain = True

    def strategy(self, model: nn.Module, **options) -> FedAvgStrategy:
        return FedAvgStrategy(**options)
