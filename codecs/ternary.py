"""``ternary`` stage: every value becomes -s, 0 or +s (one fp32 scale s per tensor).

* deterministic (default, TWN-style): threshold t = ``threshold`` * mean|x| (0.7), kept
  entries |x| > t, s = mean |x| over the kept entries;
* stochastic (TernGrad, ``seed`` required): s = max|x|, entry kept with probability |x|/s,
  so E[x^] = x.

Body layout: u8 mode (0 deterministic, 1 stochastic), f32 scale (finite, >= 0), then an
entropy body (entropy.py) of the symbols {0: 0, 1: +s, 2: -s}, alphabet 3.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np

from .entropy import encode_symbols, read_symbols
from .framing import DTYPE_CODES, CodecError, Reader
from .registry import Codec, register_codec
from .values import decode_value_frame, encode_value_frame

__all__ = ["TernaryCodec", "ternarize", "encode_ternary", "read_ternary"]


def ternarize(x: np.ndarray, *, stochastic: bool = False, seed=None,
              threshold: float = 0.7) -> tuple[np.ndarray, float]:
    x = np.asarray(x, dtype=np.float32).reshape(-1)
    if x.size == 0:
        return np.zeros(0, np.uint8), 0.0
    ax = np.abs(x)
    if not np.isfinite(ax.max()):
        raise CodecError("ternary: non-finite values")
    if stochastic:
        if seed is None:
            raise CodecError("ternary: stochastic mode needs a seed")
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        s = float(ax.max())
        keep = (rng.random(x.size, dtype=np.float32) * np.float32(s) < ax if s > 0
                else np.zeros(x.size, bool))
    else:
        t = np.float32(threshold) * ax.mean(dtype=np.float64)
        keep = ax > t
        s = float(ax[keep].mean(dtype=np.float64)) if keep.any() else 0.0
    s = float(np.float32(s))
    sym = np.where(keep, np.where(x < 0, 2, 1), 0).astype(np.uint8)
    if s == 0.0:
        sym[:] = 0
    return sym, s


def encode_ternary(x: np.ndarray, *, stochastic: bool = False, seed=None,
                   threshold: float = 0.7) -> bytes:
    sym, s = ternarize(x, stochastic=stochastic, seed=seed, threshold=threshold)
    return bytes([1 if stochastic else 0]) + struct.pack("<f", s) + encode_symbols(sym, 3)


def read_ternary(r_: Reader, count: int, where: str) -> np.ndarray:
    mode = r_.u8(f"{where} ternary mode")
    if mode > 1:
        raise CodecError(f"{where}: ternary mode {mode} invalid")
    s = r_.f32(f"{where} ternary scale")
    if s < 0:
        raise CodecError(f"{where}: ternary scale {s} negative")
    sym = read_symbols(r_, count, where, alphabet=3)
    lut = np.array([0.0, s, -s], dtype=np.float32)
    return lut[sym]


@register_codec
class TernaryCodec(Codec):
    """Dense tensors as {-s, 0, +s} per tensor (lossy)."""

    name = "ternary"
    version = 1
    lossy = True

    def encode(self, arrays: Sequence[np.ndarray], *, stochastic: bool = False, seed=None,
               threshold: float = 0.7) -> bytes:
        return encode_value_frame(self, arrays, "ternary", stochastic=stochastic, seed=seed,
                                  threshold=threshold)

    def decode(self, payload: bytes,
               expected_shapes: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
        return decode_value_frame(self, payload, expected_shapes, allowed=[DTYPE_CODES["ternary"]])
