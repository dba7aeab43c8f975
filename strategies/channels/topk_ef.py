"""Top-k with error feedback (Stich et al. 2018, "Sparsified SGD with memory"; Lin et al. 2018,
Deep Gradient Compression; the `topk` channels of FLSim/FedML).

Codes an update: its k = max(floor(N (1 - sparsity)), 1) largest magnitudes over all tensors
together (global top-k), as one `sparse` payload (coded positions + values in `values`, any
value spec of the codecs). With `error-feedback` the sender keeps what it did not send and adds
it next time, so nothing it computed is lost, only delayed: sent_t + e_t = u_t + e_(t-1) entry
by entry in float32 (the kept entries are sent as they are, or the value coding's rounding
stays in e). Top-k is contractive: the same with and without a memory.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from flwr.app import RecordDict

from fedsqueeze.codecs import VALUE_SPECS, decode_sparse_parts, encode_sparse_parts, get_codec
from fedsqueeze.strategies.channel import Channel, Coded, register_channel
from fedsqueeze.strategies.payload import PAYLOAD_RECORD, pack, unpack
from fedsqueeze.strategies.tensors import flatten, numel, top_k_count, top_k_indices, unflatten

SPARSE = get_codec("sparse")


@register_channel("topk-ef")
@dataclasses.dataclass(frozen=True)
class TopKEF(Channel):
    codes = "update"

    sparsity: float = 0.99        # fraction of the update's entries not sent each time
    values: str = "fp32"          # value format of the sent entries (codecs' value specs)
    error_feedback: bool = True   # keep the unsent remainder and add it next time

    def __post_init__(self) -> None:
        self.check({"sparsity": (lambda v: 0 <= v < 1, "must be in [0, 1)")})
        self.check_choice("values", VALUE_SPECS)

    @property
    def spreads_outliers(self) -> bool:
        return self.values == "ternary"  # one magnitude for every sent entry

    @property
    def start_dtype(self) -> str:
        """The broadcast model starts in the sent values' format (ternary: fp32)."""
        return "fp32" if self.values == "ternary" else self.values

    def encode(self, arrays: list[np.ndarray], *, seed: int = 0, memory: bool = False) -> Coded:
        update = flatten(arrays)
        n = update.size
        idx = top_k_indices(update, top_k_count(n, self.sparsity))
        payload = encode_sparse_parts([(n,)], [idx], [update[idx]], values=self.values)
        sent = decode_sparse_parts(payload, [(n,)])[0]  # the receiver's values, rounding in
        delivered = np.zeros_like(update)
        delivered[sent.indices.astype(np.int64)] = sent.values
        return Coded({PAYLOAD_RECORD: pack(SPARSE.stype, payload)},
                     unflatten(delivered, [np.shape(a) for a in arrays]))

    def decode(self, content: RecordDict, shapes: list[tuple[int, ...]], *,
               memory: bool = False) -> list[np.ndarray]:
        n = numel(shapes)
        vector = decode_sparse_parts(unpack(content, SPARSE.stype), [(n,)])[0].to_dense()
        return unflatten(vector, shapes)
