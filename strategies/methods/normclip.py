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
from flwr.app import ConfigRecord, RecordDict
from torch import nn

from fedsqueeze.strategies.base import ClientSide, Method, SqueezeStrategy
from fedsqueeze.strategies.model_codec import DenseModelCodec
from fedsqueeze.strategies.registry import register
from fedsqueeze.strategies.settings import MethodConfig
from fedsqueeze.strategies.state import load_array_list, save_array_list
from fedsqueeze.strategies.tensors import (
    Arrays,
    expected_shapes,
    flatten,
    keyed,
    travelling_keys,
    unflatten,
)

NORMS = "norms"
STATE_RECORD = "normclip.round"  # [global received, local trained] of this round
BOUND_RECORD = "normclip"


@dataclasses.dataclass(frozen=True)
class NormClipConfig(MethodConfig):
    quantile: float = 0.5  # the bound C is this quantile of the clients' update norms

    def __post_init__(self) -> None:
        self.check({"quantile": (lambda v: 0 < v <= 1, "must be in (0, 1]")})


class NormClipStrategy(SqueezeStrategy):
    def __init__(self, method: NormClip, model: nn.Module, **options) -> None:
        super().__init__(method, model, **options)
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
    """Trains in exchange "norms" (keeping what it received and what it trained), answers
    exchange "train" with the clipped model without training again."""

    def trains(self, exchange: str) -> bool:
        return exchange == NORMS

    def receive(self, exchange: str, content: RecordDict, state: RecordDict) -> Arrays:
        arrays = self.dense_or_plain(content)
        self._received = flatten(list(arrays.values()))
        return arrays

    def send(self, exchange: str, arrays: Arrays, state: RecordDict) -> RecordDict:
        local = flatten(list(arrays.values()))
        save_array_list(state, STATE_RECORD, [self._received, local], round=self.server_round)
        self._norm = float(np.linalg.norm(np.subtract(local, self._received, dtype=np.float32)))
        return RecordDict()

    def reply_without_training(self, exchange: str, content: RecordDict, state: RecordDict
                               ) -> RecordDict:
        saved = load_array_list(state, STATE_RECORD)
        if saved is None or int(saved[1]["round"]) != self.server_round:
            raise ValueError(f"normclip: no model trained in exchange '{NORMS}' of round "
                             f"{self.server_round} on this client")
        (received, local), _ = saved
        bound = float(content.config_records[BOUND_RECORD]["bound"])
        update = np.subtract(local, received, dtype=np.float32)
        norm = float(np.linalg.norm(update))
        self._scale = min(1.0, bound / norm) if norm > 0 else 1.0
        clipped = np.add(received, np.multiply(update, np.float32(self._scale),
                                               dtype=np.float32), dtype=np.float32)
        model = self.method.structure()
        arrays = keyed(travelling_keys(model), unflatten(clipped, expected_shapes(model)))
        return DenseModelCodec("fp32").encode(arrays)

    def metrics(self, exchange: str, state: RecordDict) -> dict[str, float]:
        return {"update-norm": self._norm} if exchange == NORMS else {"clip-scale": self._scale}


@register("normclip")
class NormClip(Method):
    Config = NormClipConfig
    Strategy = NormClipStrategy
    Client = NormClipClient
    spreads_outliers = True  # an update's norm is clipped to the round's median
