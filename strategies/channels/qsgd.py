"""QSGD (Alistarh et al. 2017, "QSGD: Communication-efficient SGD via gradient quantization and
encoding"): an update, stochastically quantized to `bits` bits per entry.

The update u (all tensors, flat canonical order) is cut into buckets of `bucket` consecutive
entries (the paper's bucketing); per bucket its L2 norm ||u_b|| (one fp32 each, `norms`
record) and per entry a signed level sign(u_i) l_i, l_i in {0, .., s}, s = 2^(bits-1) - 1,
chosen stochastically: l_i = floor(s |u_i| / ||u_b||) + 1 with probability
frac(s |u_i| / ||u_b||), so that E[||u_b|| sign(u_i) l_i / s] = u_i (unbiased). The 2s + 1
signed levels travel as entropy-coded symbols (the paper's Elias coding replaced by the codecs'
rANS/zstd/raw choice: never more than `bits` bits per entry plus a table).

A sender with an error memory (the uplink with `error-feedback`; a downlink always) scales the
decoded update by 1 / (1 + omega), omega = min(d / s^2, sqrt(d) / s) the paper's variance bound
for buckets of d entries: error feedback needs a contractive compressor (Stich and Karimireddy
2019; Beznosikov et al. 2020), and unscaled QSGD at few bits is not (its error is up to
sqrt(d) / s times the update: measured, 2 bits diverged within 12 rounds on fc2). Without a
memory it stays unbiased. Rounding is seeded (`seed`), so runs repeat exactly.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from flwr.app import RecordDict

from fedsqueeze.codecs import CodecError, get_codec
from fedsqueeze.strategies.channel import Channel, Coded, register_channel
from fedsqueeze.strategies.payload import PAYLOAD_RECORD, pack, unpack
from fedsqueeze.strategies.tensors import flatten, numel, unflatten

SYMBOLS = get_codec("entropy")
NORMS = get_codec("dense")
NORMS_RECORD = "norms"


def bucket_norms(update: np.ndarray, bucket: int) -> np.ndarray:
    """fp32 L2 norm of each bucket of `bucket` consecutive entries (the last may be short)."""
    pad = (-update.size) % bucket
    padded = np.concatenate([update, np.zeros(pad, np.float32)]).reshape(-1, bucket)
    return np.sqrt(np.einsum("ij,ij->i", padded, padded, dtype=np.float64)).astype(np.float32)


def quantize(update: np.ndarray, levels: int, bucket: int, rng: np.random.Generator
             ) -> tuple[np.ndarray, np.ndarray]:
    """(norms fp32, signed levels int in [-levels, levels]) of a flat float32 update."""
    norms = bucket_norms(update, bucket)
    per_entry = np.repeat(norms, bucket)[:update.size].astype(np.float64)
    safe = np.where(per_entry > 0, per_entry, 1.0)
    scaled = np.abs(update) / safe * levels
    low = np.floor(scaled)
    level = low + (rng.random(update.size) < scaled - low)
    level = np.minimum(level, levels)  # fp rounding can put |u_i| a hair over ||u_b||
    return norms, (np.sign(update) * level).astype(np.int64)


def dequantize(norms: np.ndarray, signed: np.ndarray, levels: int, bucket: int) -> np.ndarray:
    """The receiver's update: ||u_b|| * level / s, in float32."""
    per_entry = np.repeat(norms.astype(np.float32), bucket)[:signed.size]
    return (per_entry * (signed.astype(np.float32) / np.float32(levels))).astype(np.float32)


@register_channel("qsgd")
@dataclasses.dataclass(frozen=True)
class QSGD(Channel):
    codes = "update"
    stochastic = True

    bits: int = 4                 # bits per entry: sign + level, s = 2^(bits-1) - 1 levels
    bucket: int = 512             # entries per norm (the paper's bucket size d)
    error_feedback: bool = False  # keep the quantization error and add it next time

    def __post_init__(self) -> None:
        self.check({"bits": (lambda v: 2 <= v <= 8, "must be in 2..8"),
                    "bucket": (lambda v: v >= 1, "must be >= 1")})

    @property
    def levels(self) -> int:
        return (1 << (self.bits - 1)) - 1

    @property
    def variance_bound(self) -> float:
        """omega: E||Q(u) - u||^2 <= omega ||u||^2 per bucket (QSGD, Lemma 3.1)."""
        d, s = self.bucket, self.levels
        return min(d / s**2, d**0.5 / s)

    def scale(self, memory: bool) -> np.float32:
        """1 / (1 + omega) for a sender with an error memory, else 1 (unbiased)."""
        return np.float32(1 / (1 + self.variance_bound) if memory else 1)

    def encode(self, arrays: list[np.ndarray], *, seed: int = 0, memory: bool = False) -> Coded:
        update = flatten(arrays)
        norms, signed = quantize(update, self.levels, self.bucket,
                                 np.random.default_rng([seed, 0x05D]))
        symbols = (signed + self.levels).astype(np.uint8)
        records = {PAYLOAD_RECORD: pack(SYMBOLS.stype, SYMBOLS.encode(
                       [symbols], alphabet=2 * self.levels + 1)),
                   NORMS_RECORD: pack(NORMS.stype, NORMS.encode([norms], dtype="fp32"))}
        delivered = dequantize(norms, signed, self.levels, self.bucket) * self.scale(memory)
        return Coded(records, unflatten(delivered, [np.shape(a) for a in arrays]))

    def decode(self, content: RecordDict, shapes: list[tuple[int, ...]], *,
               memory: bool = False) -> list[np.ndarray]:
        size = numel(shapes)
        (symbols,) = SYMBOLS.decode(unpack(content, SYMBOLS.stype), [(size,)],
                                    alphabet=2 * self.levels + 1)
        (norms,) = NORMS.decode(unpack(content, NORMS.stype, NORMS_RECORD),
                                [(-(-size // self.bucket),)])
        if not np.all(np.isfinite(norms)) or np.any(norms < 0):
            raise CodecError("qsgd: bucket norms must be finite and >= 0")
        vector = dequantize(norms, symbols.astype(np.int64) - self.levels, self.levels,
                            self.bucket) * self.scale(memory)
        return unflatten(vector, shapes)
