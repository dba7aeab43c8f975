"""FedAvgM (Hsu et al., 2019): FedAvg with server momentum, the baseline FedDST compares
against. The aggregation is Flower's own `FedAvgM` (pseudo-gradient = global - average,
momentum buffer, server learning rate); the model travels dense both ways (fp32)."""

from __future__ import annotations

import dataclasses

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAvgM as FlowerFedAvgM

from fedsqueeze.strategies.base import Method, SqueezeStrategy
from fedsqueeze.strategies.registry import register
from fedsqueeze.strategies.settings import MethodConfig
from fedsqueeze.strategies.state import ServerState
from fedsqueeze.strategies.tensors import Arrays, to_arrayrecord


@dataclasses.dataclass(frozen=True)
class FedAvgMConfig(MethodConfig):
    server_lr: float = 1.0        # the server's learning rate on the pseudo-gradient
    server_momentum: float = 0.9  # its momentum (0 with server-lr 1 is FedAvg)

    def __post_init__(self) -> None:
        self.check({"server_lr": (lambda v: v > 0, "must be > 0"),
                    "server_momentum": (lambda v: 0 <= v < 1, "must be in [0, 1)")})


class FedAvgMStrategy(SqueezeStrategy, FlowerFedAvgM):
    """Sampling, codecs and checks of `SqueezeStrategy`; aggregation of Flower's FedAvgM."""

    def __init__(self, method: FedAvgMMethod, model) -> None:
        super().__init__(method, model)
        self.server_learning_rate = method.config.server_lr
        self.server_momentum = method.config.server_momentum
        self.server_opt = self.server_momentum != 0.0 or self.server_learning_rate != 1.0

    def begin_round(self, server_round: int, arrays: Arrays) -> None:
        self.current_arrays = to_arrayrecord(arrays)  # the model the pseudo-gradient starts at

    def aggregate_decoded(self, server_round: int, replies: list[Message]
                          ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return FlowerFedAvgM.aggregate_train(self, server_round, replies)

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
    Strategy = FedAvgMStrategy
