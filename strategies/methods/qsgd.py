"""QSGD (Alistarh et al. 2017, "QSGD: Communication-efficient SGD via gradient quantization
and encoding"): the client's update, stochastically quantized to `bits` bits per entry.

Up: the update u (local - received global, plus the error memory with `error-feedback`) is cut
into buckets of `bucket` consecutive entries (flat canonical order, the paper's bucketing);
per bucket its L2 norm ||u_b|| (one fp32 each, dense codec) and per entry a signed level
sign(u_i) l_i, l_i in {0, .., s}, s = 2^(bits-1) - 1, chosen stochastically:
l_i = floor(s |u_i| / ||u_b||) + 1 with probability frac(s |u_i| / ||u_b||), so that
E[||u_b|| sign(u_i) l_i / s] = u_i (unbiased). The 2s + 1 = 2^bits - 1 signed levels travel
as entropy-coded symbols (the paper's Elias coding, replaced by the codecs' rANS/zstd/raw
choice: never more than `bits` bits per entry plus a table). With `error-feedback` the
decoded update is scaled by 1 / (1 + omega), omega = min(d / s^2, sqrt(d) / s) the paper's
variance bound for buckets of d entries: error feedback needs a contractive compressor
(Stich and Karimireddy 2019; Beznosikov et al. 2020), and unscaled QSGD at few bits is not (its
error is up to sqrt(d) / s times the update: measured, 2 bits diverged within 12 rounds on
fc2). Without error feedback it stays unbiased. The compressed downlink always has a memory
(the server's), so it is always scaled. Rounding is seeded by the
client's (seed, round, partition) seed, so runs repeat exactly. Down: the global model,
dense fp32, or with `downlink = "compressed"` QSGD of the global model's change to synced
clients (the server's own error memory). Server: global + decoded update, averaged by
Flower's FedAvg (`strategies/updates.py`). With error feedback the quantization error stays
with the client.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from flwr.app import RecordDict
from torch import nn

from fedsqueeze.codecs import CodecError, get_codec
from fedsqueeze.strategies.base import Method
from fedsqueeze.strategies.payload import PAYLOAD_RECORD, pack, unpack
from fedsqueeze.strategies.registry import register
from fedsqueeze.strategies.settings import MethodConfig
from fedsqueeze.strategies.training import ClientData
from fedsqueeze.strategies.updates import (
    UpdateClient,
    UpdateCoder,
    UpdateStrategy,
    check_downlink,
)

SYMBOLS = get_codec("entropy")
NORMS = get_codec("dense")
NORMS_RECORD = "norms"
ERROR_RECORD = "qsgd.error"


@dataclasses.dataclass(frozen=True)
class QSGDConfig(MethodConfig):
    bits: int = 4                 # bits per entry: sign + level, s = 2^(bits-1) - 1 levels
    bucket: int = 512             # entries per norm (the paper's bucket size d)
    error_feedback: bool = False  # keep the quantization error and add it next round
    downlink: str = "dense"       # dense (the model) or compressed (QSGD of its change)

    def __post_init__(self) -> None:
        self.check({"bits": (lambda v: 2 <= v <= 8, "must be in 2..8"),
                    "bucket": (lambda v: v >= 1, "must be >= 1")})
        check_downlink(self)

    @property
    def levels(self) -> int:
        return (1 << (self.bits - 1)) - 1

    @property
    def variance_bound(self) -> float:
        """omega: E||Q(u) - u||^2 <= omega ||u||^2 per bucket (QSGD, Lemma 3.1)."""
        d, s = self.bucket, self.levels
        return min(d / s**2, d**0.5 / s)

    def scale(self, memory: bool) -> np.float32:
        """1 / (1 + omega) for a sender with an error memory (it needs a contractive
        compressor: unscaled QSGD's error outgrows the update, and the memory explodes),
        else 1 (unbiased)."""
        return np.float32(1 / (1 + self.variance_bound) if memory else 1)


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


class QSGDCoder(UpdateCoder):
    def __init__(self, config: QSGDConfig, memory: bool) -> None:
        self.config = config
        self.scale = config.scale(memory)

    def encode(self, update: np.ndarray, seed: int) -> tuple[dict, np.ndarray]:
        c = self.config
        norms, signed = quantize(update, c.levels, c.bucket, np.random.default_rng([seed, 0x05D]))
        symbols = (signed + c.levels).astype(np.uint8)
        records = {PAYLOAD_RECORD: pack(SYMBOLS.stype, SYMBOLS.encode(
                       [symbols], alphabet=2 * c.levels + 1)),
                   NORMS_RECORD: pack(NORMS.stype, NORMS.encode([norms], dtype="fp32"))}
        return records, dequantize(norms, signed, c.levels, c.bucket) * self.scale

    def decode(self, content: RecordDict, size: int) -> np.ndarray:
        c = self.config
        (symbols,) = SYMBOLS.decode(unpack(content, SYMBOLS.stype), [(size,)],
                                    alphabet=2 * c.levels + 1)
        (norms,) = NORMS.decode(unpack(content, NORMS.stype, NORMS_RECORD),
                                [(-(-size // c.bucket),)])
        if not np.all(np.isfinite(norms)) or np.any(norms < 0):
            raise CodecError("qsgd: bucket norms must be finite and >= 0")
        return dequantize(norms, symbols.astype(np.int64) - c.levels, c.levels,
                          c.bucket) * self.scale


class QSGDClient(UpdateClient):
    error_record = ERROR_RECORD
    #: seeds the stochastic rounding of `send`: the client's seed of the round, set by `train`
    rounding_seed: int | None = None

    def train(self, model: nn.Module, data: ClientData, state: RecordDict, seed: int
              ) -> dict[str, float]:
        self.rounding_seed = seed
        return super().train(model, data, state, seed)

    def send(self, model: nn.Module, state: RecordDict) -> RecordDict:
        if self.rounding_seed is None:
            raise RuntimeError("qsgd: send before train (the rounding seed is set by train)")
        return self.send_update(model, state, self.rounding_seed)


@register("qsgd")
class QSGD(Method):
    Config = QSGDConfig
    Strategy = UpdateStrategy
    Client = QSGDClient

    def coder(self, memory: bool) -> QSGDCoder:
        return QSGDCoder(self.config, memory)
