"""Top-k sparsified updates with error feedback (Stich et al. 2018, "Sparsified SGD with
memory"; Lin et al. 2018, Deep Gradient Compression; the `topk` channels of FLSim/FedML).

Down: the global model, dense (fp32). Up: the client's update u = local - received global plus
its error memory e, a = u + e, sparsified to its k = max(floor(N (1 - sparsity)), 1) largest
magnitudes over the whole model (global top-k), sent as one `sparse` payload (coded positions
+ values in `topk-ef.values`); the client keeps e <- a - sent in `context.state`, so nothing it
computed is lost, only delayed: sent_t + e_t = u_t + e_(t-1) entry by entry (in float32: the
kept entries are sent as they are, or the value coding's rounding error stays in e). The
update plumbing (error memory, server-side "global + update") is the framework's
`strategies/updates.py`. With
`error-feedback = false` the remainder is dropped (plain top-k). `downlink = "compressed"`
sends synced clients the top-k of the global model's change instead of the model, with the
server's own error memory (`strategies/updates.py`). Every travelling tensor is in
the update, BatchNorm running statistics included.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from flwr.app import RecordDict
from torch import nn

from fedsqueeze.codecs import VALUE_SPECS, decode_sparse_parts, encode_sparse_parts, get_codec
from fedsqueeze.strategies.base import Method
from fedsqueeze.strategies.payload import PAYLOAD_RECORD, pack, unpack
from fedsqueeze.strategies.registry import register
from fedsqueeze.strategies.settings import MethodConfig
from fedsqueeze.strategies.tensors import top_k_count, top_k_indices
from fedsqueeze.strategies.updates import (
    UpdateClient,
    UpdateCoder,
    UpdateStrategy,
    check_downlink,
)

SPARSE = get_codec("sparse")
ERROR_RECORD = "topk-ef.error"
VALUES = VALUE_SPECS  # fp32, fp16, bf16, q1..q8 (uniform b-bit, entropy-coded), ternary


@dataclasses.dataclass(frozen=True)
class TopKConfig(MethodConfig):
    sparsity: float = 0.99        # fraction of the update's entries not sent each round
    error_feedback: bool = True   # keep the unsent remainder and add it next round
    values: str = "fp32"          # value format of the sent entries
    downlink: str = "dense"       # dense (the model) or compressed (top-k of its change)

    def __post_init__(self) -> None:
        self.check({"sparsity": (lambda v: 0 <= v < 1, "must be in [0, 1)")})
        self.check_choice("values", VALUES)
        check_downlink(self)


def sparsify(update: np.ndarray, sparsity: float, values: str
             ) -> tuple[bytes, np.ndarray, np.ndarray]:
    """(payload, sent indices, sent values as the receiver decodes them) of a flat update."""
    n = update.size
    idx = top_k_indices(update, top_k_count(n, sparsity))
    payload = encode_sparse_parts([(n,)], [idx], [update[idx]], values=values)
    sent = decode_sparse_parts(payload, [(n,)])[0]  # the receiver's values, rounding included
    return payload, sent.indices.astype(np.int64), sent.values


class TopKCoder(UpdateCoder):
    def __init__(self, config: TopKConfig) -> None:
        self.config = config

    def encode(self, update: np.ndarray, seed: int) -> tuple[dict, np.ndarray]:
        payload, idx, values = sparsify(update, self.config.sparsity, self.config.values)
        delivered = np.zeros_like(update)
        delivered[idx] = values
        return {PAYLOAD_RECORD: pack(SPARSE.stype, payload)}, delivered

    def decode(self, content: RecordDict, size: int) -> np.ndarray:
        return decode_sparse_parts(unpack(content, SPARSE.stype), [(size,)])[0].to_dense()


class TopKClient(UpdateClient):
    error_record = ERROR_RECORD

    def send(self, model: nn.Module, state: RecordDict) -> RecordDict:
        return self.send_update(model, state, seed=0)  # top-k is deterministic


@register("topk-ef")
class TopKEF(Method):
    Config = TopKConfig
    Strategy = UpdateStrategy
    Client = TopKClient

    def coder(self, memory: bool) -> TopKCoder:
        return TopKCoder(self.config)  # top-k is contractive: the same with a memory
