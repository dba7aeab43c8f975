"""Scaled sign with error feedback (Karimireddy et al., ICML 2019, "Error feedback fixes
SignSGD and other gradient compression schemes"): each tensor of the update as its signs
times one magnitude, the mean |u| of the tensor.

C(u) = (||u||_1 / d) sign(u) per tensor of d entries is contractive, so error feedback is
always on: the sender keeps u - C(u) and adds it next time. The signs travel as one coded
mask of the positive entries (`positions` codec, about one bit per entry), the magnitudes as
one fp32 each (`scales`); a zero entry counts as negative. One shared magnitude spreads an
outlier over its tensor (`spreads_outliers`): a scaled update reaches the server inside
`max-abs-value`, and a robust strategy (FedTrimmedAvg) is the defence.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from flwr.app import RecordDict

from fedsqueeze.codecs import CodecError, get_codec
from fedsqueeze.strategies.channel import Channel, Coded, register_channel
from fedsqueeze.strategies.payload import PAYLOAD_RECORD, pack, unpack

SIGNS = get_codec("positions")
SCALES = get_codec("dense")
SCALES_RECORD = "scales"


def scaled_signs(scales: np.ndarray, positive: list[np.ndarray]) -> list[np.ndarray]:
    """The receiver's tensors: +scale where positive, -scale elsewhere (float32)."""
    return [np.where(p, s, -s).astype(np.float32) for s, p in zip(scales, positive)]


@register_channel("sign-ef")
@dataclasses.dataclass(frozen=True)
class SignEF(Channel):
    codes = "update"
    error_feedback = True     # always: what the signs leave out comes back later
    spreads_outliers = True   # one scale per tensor for every entry

    def encode(self, arrays: list[np.ndarray], *, seed: int = 0, memory: bool = False) -> Coded:
        scales = np.array([np.mean(np.abs(a), dtype=np.float64) if a.size else 0.0
                           for a in arrays], np.float32)
        positive = [np.asarray(a) > 0 for a in arrays]
        records = {PAYLOAD_RECORD: pack(SIGNS.stype, SIGNS.encode(positive)),
                   SCALES_RECORD: pack(SCALES.stype, SCALES.encode([scales], dtype="fp32"))}
        return Coded(records, scaled_signs(scales, positive))

    def decode(self, content: RecordDict, shapes: list[tuple[int, ...]], *,
               memory: bool = False) -> list[np.ndarray]:
        positive = SIGNS.decode(unpack(content, SIGNS.stype), list(shapes))
        (scales,) = SCALES.decode(unpack(content, SCALES.stype, SCALES_RECORD), [(len(shapes),)])
        if not np.all(np.isfinite(scales)) or np.any(scales < 0):
            raise CodecError("sign-ef: scales must be finite and >= 0")
        return scaled_signs(scales, positive)
