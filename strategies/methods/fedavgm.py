"""FedAvgM (Hsu et al., 2019): FedAvg with server momentum, the baseline FedDST compares
against. Flower's own `FedAvgM` (pseudo-gradient = the round's model - the average, momentum
buffer, server learning rate), stepping each round from the model it was given (under a
versioned downlink, the broadcast model clients trained from); its momentum is exported for
resume."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvgM as FlowerFedAvgM
from torch import nn

from fedsqueeze.strategies.base import Method, Tagged
from fedsqueeze.strategies.registry import register
from fedsqueeze.strategies.settings import MethodConfig
from fedsqueeze.strategies.state import ServerState


@dataclasses.dataclass(frozen=True)
class FedAvgMConfig(MethodConfig):
    server_lr: float = 1.0        # the server's learning rate on the pseudo-gradient
    server_momentum: float = 0.9  # its momentum (0 with server-lr 1 is FedAvg)

    def __post_init__(self) -> None:
        self.check({"server_lr": (lambda v: v > 0, "must be > 0"),
                    "server_momentum": (lambda v: 0 <= v < 1, "must be in [0, 1)")})


class FedAvgMStrategy(Tagged, FlowerFedAvgM):
    method_name = "fedavgm"

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.current_arrays = arrays  # the pseudo-gradient starts at the round's model
        return super().configure_train(server_round, arrays, config, grid)

    def export_state(self) -> ServerState:
        if self.momentum_vector is None:
            return ServerState()
        return ServerState({str(i): np.asarray(v) for i, v in enumerate(self.momentum_vector)},
                           {"tensors": len(self.momentum_vector)})

    def import_state(self, state: ServerState) -> None:
        if "tensors" in state.meta:
            self.momentum_vector = [state.arrays[str(i)]
                                    for i in range(int(state.meta["tensors"]))]


@register("fedavgm")
class FedAvgMMethod(Method):
    Config = FedAvgMConfig
    plain = True

    def strategy(self, model: nn.Module, **options) -> FedAvgMStrategy:
        return FedAvgMStrategy(server_learning_rate=self.config.server_lr,
                               server_momentum=self.config.server_momentum, **options)
