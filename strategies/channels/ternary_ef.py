"""Ternary with error feedback (TWN-style thresholding, Li et al. 2016; with the error
feedback of Karimireddy et al. 2019): each tensor of the update as -s, 0 or +s.

Per tensor, entries with |u| > `threshold` x mean |u| are kept and sent as their sign times
s, the mean |u| over the kept ones (one fp32 per tensor); the others are 0. The symbols are
entropy-coded (`ternary` codec: under log2(3) bits per entry, less when most are 0). It is
biased, so the sender keeps u - C(u) and adds it next time (error feedback, always on). The
shared s spreads an outlier over its tensor's kept entries (`spreads_outliers`).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from flwr.app import RecordDict

from fedsqueeze.codecs import get_codec
from fedsqueeze.strategies.channel import Channel, Coded, register_channel
from fedsqueeze.strategies.payload import PAYLOAD_RECORD, pack, unpack

TERNARY = get_codec("ternary")


@register_channel("ternary-ef")
@dataclasses.dataclass(frozen=True)
class TernaryEF(Channel):
    codes = "update"
    error_feedback = True     # always: what the ternary values leave out comes back later
    spreads_outliers = True   # one magnitude per tensor for every sent entry

    threshold: float = 0.7  # kept: |u| > threshold x the tensor's mean |u|

    def __post_init__(self) -> None:
        self.check({"threshold": (lambda v: v >= 0, "must be >= 0")})

    def encode(self, arrays: list[np.ndarray], *, seed: int = 0, memory: bool = False) -> Coded:
        records = {PAYLOAD_RECORD: pack(TERNARY.stype, TERNARY.encode(
            arrays, threshold=self.threshold))}
        shapes = [np.shape(a) for a in arrays]
        return Coded(records, lambda: self.decode(RecordDict(records), shapes))

    def decode(self, content: RecordDict, shapes: list[tuple[int, ...]], *,
               memory: bool = False) -> list[np.ndarray]:
        return TERNARY.decode(unpack(content, TERNARY.stype), list(shapes))
