"""Norm-bounded FedAvg with an adaptive bound: two exchanges per round.

A robust-aggregation defence (Sun et al. 2019, "Can you really backdoor federated
learning?": bound every update's norm before averaging), with the bound chosen each round
from the clients' own update norms, so no constant has to be tuned:

1. exchange "norms": down = the global model (dense); each client trains, keeps its trained
   model and the global model it received in `context.state`, and uploads only ||u||, the
   L2 norm of its update u = local - global (a few bytes);
2. the server sets the bound C = `normclip.quantile` of the reported norms (the median by
   default) and sends it; exchange "train": each client uploads global + u min(1, C / ||u||)
   (dense), which Flower's FedAvg averages.

A client that fails exchange 1 is left out of exchange 2. Clients' updates larger than C
(outliers, or a poisoned update) are scaled down to C; the rest pass unchanged.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, MetricRecord, RecordDict
from torch import nn

from fedsqueeze.strategies.base import ClientSide, Method, SqueezeStrategy
from fedsqueeze.strategies.registry import register
from fedsqueeze.strategies.settings import MethodConfig
from fedsqueeze.strategies.state import load_array_list, save_array_list
from fedsqueeze.strategies.tensors import (
    Arrays,
    flatten,
    load_arrays,
    model_arrays,
    unflatten,
)
from fedsqueeze.strategies.training import ClientData

NORMS = "norms"
STATE_RECORD = "normclip.round"  # [global received, local trained] of this round
BOUND_RECORD = "normclip"


@dataclasses.dataclass(frozen=True)
class NormClipConfig(MethodConfig):
    quantile: float = 0.5  # the bound C is this quantile of the clients' update norms

    def __post_init__(self) -> None:
        self.check({"quantile": (lambda v: 0 < v <= 1, "must be in (0, 1]")})


class NormClipStrategy(SqueezeStrategy):
    def __init__(self, method: NormClip, model: nn.Module) -> None:
        super().__init__(method, model)
        self.bound: float | None = None
        self.norms: dict[int, float] = {}

    def exchanges(self, server_round: int) -> tuple[str, ...]:
        return (NORMS,)

    def begin_round(self, server_round: int, arrays: Arrays) -> None:
        self.bound, self.norms = None, {}

    def encode_exchange(self, name: str, server_round: int, node_id: int) -> RecordDict:
        return self.model_codec.encode(self.round_arrays)

    def decode_exchange(self, name: str, server_round: int, node_id: int,
                        content: RecordDict) -> float:
        norm = float(content.metric_records["metrics"]["update-norm"])
        if not np.isfinite(norm) or norm < 0:
            raise ValueError(f"update norm {norm} is not a finite non-negative number")
        return norm

    def combine_exchange(self, name: str, server_round: int, decoded: dict[int, Any]) -> None:
        self.norms = dict(decoded)
        self.bound = float(np.quantile(list(decoded.values()), self.config.quantile))

    def encode_down(self, server_round: int, node_id: int, arrays: Arrays) -> RecordDict:
        return RecordDict({BOUND_RECORD: ConfigRecord({"bound": self.bound})})

    def round_metrics(self, server_round: int) -> dict[str, Any]:
        norms = list(self.norms.values())
        return {"clip_bound": self.bound,
                "clipped": int(sum(n > self.bound for n in norms)) if norms else None,
                "update_norm_max": max(norms) if norms else None}


class NormClipClient(ClientSide):
    def exchange(self, name: str, content: RecordDict, state: RecordDict, model: nn.Module,
                 data: ClientData, seed: int) -> RecordDict:
        model = self.checked(ClientSide.receive(self, content, state, model))
        received = flatten(list(model_arrays(model).values()))
        loss = ClientSide.train(self, model, data, state, seed)["train-loss"]
        local = flatten(list(model_arrays(model.cpu()).values()))
        save_array_list(state, STATE_RECORD, [received, local], round=self.server_round,
                        loss=loss)
        norm = float(np.linalg.norm(np.subtract(local, received, dtype=np.float32)))
        return RecordDict({"metrics": MetricRecord({"update-norm": norm})})

    def receive(self, content: RecordDict, state: RecordDict, model: nn.Module) -> nn.Module:
        saved = load_array_list(state, STATE_RECORD)
        if saved is None or int(saved[1]["round"]) != self.server_round:
            raise ValueError(f"normclip: no model trained in exchange '{NORMS}' of round "
                             f"{self.server_round} on this client")
        (received, local), meta = saved
        bound = float(content.config_records[BOUND_RECORD]["bound"])
        update = np.subtract(local, received, dtype=np.float32)
        norm = float(np.linalg.norm(update))
        scale = min(1.0, bound / norm) if norm > 0 else 1.0
        clipped = np.add(received, np.multiply(update, np.float32(scale), dtype=np.float32),
                         dtype=np.float32)
        shapes = [a.shape for a in model_arrays(model).values()]
        load_arrays(model, unflatten(clipped, shapes))
        self._loss, self._scale = float(meta["loss"]), scale
        return model

    def train(self, model: nn.Module, data: ClientData, state: RecordDict, seed: int
              ) -> dict[str, float]:
        """Trained already, in exchange "norms"."""
        return {"train-loss": self._loss, "clip-scale": self._scale}


@register("normclip")
class NormClip(Method):
    Config = NormClipConfig
    Strategy = NormClipStrategy
    Client = NormClipClient
