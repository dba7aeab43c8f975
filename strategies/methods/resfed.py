"""ResFed (Song et al., arXiv 2212.05602): FedAvg whose model travels both ways as residuals
against predictors both ends share, per client: the `residual` channel
(`strategies/channels/residual.py`, keys `residual.*`), this method's default both ways.

The method is Flower's FedAvg over the models the server reconstructs (L^); every other plain
method runs with the same residuals with `uplink = downlink = "residual"` (FedAvgM, FedAdam,
FedPara's layers, ...).
"""

from __future__ import annotations

from flwr.serverapp.strategy import FedAvg
from torch import nn

from fedsqueeze.strategies.base import Method, Tagged
from fedsqueeze.strategies.registry import register


class ResFedStrategy(Tagged, FedAvg):
    method_name = "resfed"


@register("resfed")
class ResFed(Method):
    plain = True

    def default_channel(self) -> str:
        return "residual"

    def strategy(self, model: nn.Module, **options) -> ResFedStrategy:
        return ResFedStrategy(**options)
