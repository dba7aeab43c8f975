"""FedTrimmedAvg (Yin et al., ICML 2018, "Byzantine-robust distributed learning"): the
coordinate-wise mean of the clients' models without the `beta` fraction of largest and of
smallest values. Flower's own strategy: with channels, the defence against a scaled update
that a channel spreads below `max-abs-value`."""

from __future__ import annotations

import dataclasses

from flwr.serverapp.strategy import FedTrimmedAvg as FlowerFedTrimmedAvg
from torch import nn

from fedsqueeze.strategies.base import Method, Tagged
from fedsqueeze.strategies.registry import register
from fedsqueeze.strategies.settings import MethodConfig


@dataclasses.dataclass(frozen=True)
class FedTrimmedAvgConfig(MethodConfig):
    beta: float = 0.2  # fraction cut at each end of every coordinate

    def __post_init__(self) -> None:
        self.check({"beta": (lambda v: 0 <= v < 0.5, "must be in [0, 0.5)")})


class FedTrimmedAvgStrategy(Tagged, FlowerFedTrimmedAvg):
    method_name = "fedtrimmedavg"


@register("fedtrimmedavg")
class FedTrimmedAvg(Method):
    Config = FedTrimmedAvgConfig
    plain = True

    def strategy(self, model: nn.Module, **options) -> FedTrimmedAvgStrategy:
        return FedTrimmedAvgStrategy(beta=self.config.beta, **options)
