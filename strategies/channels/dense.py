"""Dense: every tensor's values, raw (fp32, fp16, bf16) or uniform b-bit per tensor (q1..q8:
min-max affine, nearest rounding, entropy-coded symbols). Codes the arrays themselves."""

from __future__ import annotations

import dataclasses

import numpy as np
from flwr.app import RecordDict

from fedsqueeze.codecs import get_codec
from fedsqueeze.strategies.channel import Channel, Coded, register_channel
from fedsqueeze.strategies.payload import PAYLOAD_RECORD, pack, unpack

#: value formats of a whole model (raw floats, or uniform b-bit per tensor)
DTYPES = ("fp32", "fp16", "bf16", *(f"q{b}" for b in range(1, 9)))


@register_channel("dense")
@dataclasses.dataclass(frozen=True)
class Dense(Channel):
    dtype: str = "fp32"  # fp32, fp16, bf16 or q1..q8

    def __post_init__(self) -> None:
        self.check_choice("dtype", DTYPES)

    @property
    def _codec(self):
        return get_codec("quant" if self.dtype.startswith("q") else "dense")

    def encode(self, arrays: list[np.ndarray], *, seed: int = 0, memory: bool = False) -> Coded:
        codec = self._codec
        payload = codec.encode(arrays, int(self.dtype[1:])) if self.dtype.startswith("q") \
            else codec.encode(arrays, dtype=self.dtype)
        records = {PAYLOAD_RECORD: pack(codec.stype, payload)}
        if self.dtype == "fp32":
            return Coded(records, [np.asarray(a, np.float32) for a in arrays])
        shapes = [np.shape(a) for a in arrays]
        return Coded(records, lambda: self.decode(RecordDict(records), shapes))

    def decode(self, content: RecordDict, shapes: list[tuple[int, ...]], *,
               memory: bool = False) -> list[np.ndarray]:
        codec = self._codec
        return codec.decode(unpack(content, codec.stype), list(shapes))
