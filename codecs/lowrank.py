"""``lowrank`` stage: a list of factor matrices (e.g. FedPara's X1, Y1, X2, Y2 per layer).

Each factor is a 2-D matrix whose shape is in the frame's tensor table; its values use any
value spec (values.py: fp32 / fp16 / bf16 / q1..q8 / ternary), one spec for all or one per
factor.  The bound for such a payload is its value coding (bounds.py), not a rank formula.
Decoding requires 2-D expected shapes and rejects anything else.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .framing import DTYPE_CODES
from .registry import Codec, register_codec
from .values import decode_value_frame, encode_value_frame, spec_is_lossy

__all__ = ["LowRankCodec"]

_ALLOWED = [DTYPE_CODES[k] for k in ("fp32", "fp16", "bf16", "quant", "ternary")]


@register_codec
class LowRankCodec(Codec):
    name = "lowrank"
    version = 1
    lossy = True  # with values="fp32" it is exact

    def is_lossy(self, values="fp32", **_) -> bool:
        return any(spec_is_lossy(v) for v in ([values] if isinstance(values, str) else values))

    def encode(self, factors: Sequence[np.ndarray], values: str | Sequence[str] = "fp32", *,
               stochastic: bool = False, seed=None, allow_nonfinite: bool = False) -> bytes:
        return encode_value_frame(self, factors, values, stochastic=stochastic, seed=seed,
                                  allow_nonfinite=allow_nonfinite, ndim=2)

    def decode(self, payload: bytes, expected_shapes: Sequence[tuple[int, int]], *,
               allow_nonfinite: bool = False) -> list[np.ndarray]:
        return decode_value_frame(self, payload, expected_shapes, allowed=_ALLOWED,
                                  allow_nonfinite=allow_nonfinite, ndim=2)
