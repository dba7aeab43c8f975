"""FedAdam (Reddi et al., ICLR 2021, "Adaptive Federated Optimization"): Adam on the server,
over the pseudo-gradient (the average of the clients' models minus the round's model).
Flower's own `FedAdam`; its moments are exported for resume."""

from __future__ import annotations

import dataclasses

import numpy as np
from flwr.serverapp.strategy import FedAdam as FlowerFedAdam
from torch import nn

from fedsqueeze.strategies.base import Method, Tagged
from fedsqueeze.strategies.registry import register
from fedsqueeze.strategies.settings import MethodConfig
from fedsqueeze.strategies.state import ServerState


@dataclasses.dataclass(frozen=True)
class FedAdamConfig(MethodConfig):
    eta: float = 0.01        # the server's learning rate
    beta_1: float = 0.9      # first-moment decay
    beta_2: float = 0.99     # second-moment decay
    tau: float = 1e-3        # adaptivity (Adam's epsilon)

    def __post_init__(self) -> None:
        self.check({"eta": (lambda v: v > 0, "must be > 0"),
                    "beta_1": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
                    "beta_2": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
                    "tau": (lambda v: v > 0, "must be > 0")})


class FedAdamStrategy(Tagged, FlowerFedAdam):
    method_name = "fedadam"

    def export_state(self) -> ServerState:
        if not self.m_t:
            return ServerState()
        arrays = {f"m/{k}": np.asarray(v) for k, v in self.m_t.items()}
        arrays.update({f"v/{k}": np.asarray(v) for k, v in self.v_t.items()})
        return ServerState(arrays, {"keys": list(self.m_t)})

    def import_state(self, state: ServerState) -> None:
        if "keys" in state.meta:
            self.m_t = {k: state.arrays[f"m/{k}"] for k in state.meta["keys"]}
            self.v_t = {k: state.arrays[f"v/{k}"] for k in state.meta["keys"]}


@register("fedadam")
class FedAdam(Method):
    Config = FedAdamConfig
    plain = True

    def strategy(self, model: nn.Module, **options) -> FedAdamStrategy:
        c = self.config
        return FedAdamStrategy(eta=c.eta, beta_1=c.beta_1, beta_2=c.beta_2, tau=c.tau,
                               **options)
