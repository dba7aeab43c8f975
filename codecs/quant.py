"""``quant`` stage: uniform b-bit quantization (b = 1..8) per tensor, symbols entropy-coded.

Per tensor: lo = min(x), scale = (max(x) - min(x)) / (2^b - 1) (both fp32, the affine zero
point is lo), symbol q = round((x - lo) / scale) in [0, 2^b - 1], decoded as lo + q * scale.

* deterministic rounding (nearest): |x - x^| <= scale / 2 (+ fp32 rounding of the affine map);
* stochastic rounding (``stochastic=True``, ``seed`` required): q = floor(t + u), u ~ U[0,1)
  from ``numpy.random.default_rng(seed)``; unbiased, |x - x^| < scale.

Body layout: u8 bits, u8 flags (bit 0: stochastic, informational), f32 lo, f32 scale, then
an entropy body (entropy.py) of the symbols with alphabet 2^bits.  Decoding rejects bits
outside 1..8, non-finite or negative scales, and lo + scale * (2^b - 1) overflowing fp32.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np

from .entropy import read_symbols
from .framing import DTYPE_CODES, CodecError, Reader
from .registry import Codec, register_codec
from .values import decode_value_frame, encode_value_frame

__all__ = ["QuantCodec", "quantize", "encode_quant", "read_quant", "quant_error_bound"]


def _rng(seed):
    if seed is None:
        raise CodecError("stochastic rounding needs a seed (int or numpy Generator)")
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def quantize(x: np.ndarray, bits: int, *, stochastic: bool = False,
             seed=None) -> tuple[np.ndarray, float, float]:
    """Return (symbols uint8, lo, scale)."""
    if not (isinstance(bits, (int, np.integer)) and 1 <= bits <= 8):
        raise CodecError(f"quant: bits must be an int in 1..8, got {bits!r}")
    x = np.asarray(x, dtype=np.float32).reshape(-1)
    levels = (1 << int(bits)) - 1
    if x.size == 0:
        return np.zeros(0, np.uint8), 0.0, 0.0
    lo, hi = float(x.min()), float(x.max())
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise CodecError("quant: non-finite values")
    scale = float(np.float32((hi - lo) / levels))
    if not np.isfinite(scale):
        raise CodecError("quant: value range overflows fp32")
    lo = float(np.float32(lo))
    if scale == 0.0:
        return np.zeros(x.size, np.uint8), lo, 0.0
    t = (x - np.float32(lo)) / np.float32(scale)
    if stochastic:
        t = np.floor(t + _rng(seed).random(x.size, dtype=np.float32))
    else:
        t = np.rint(t)
    return np.clip(t, 0, levels).astype(np.uint8), lo, scale


def quant_error_bound(scale: float, lo: float, bits: int, stochastic: bool = False) -> float:
    """Max |x - x^| for a tensor quantized with this (lo, scale)."""
    hi = abs(lo) + scale * ((1 << bits) - 1)
    return (scale if stochastic else scale / 2) + 4 * np.finfo(np.float32).eps * hi


def encode_quant(x: np.ndarray, bits: int = 8, *, stochastic: bool = False, seed=None,
                 entropy: str = "auto") -> bytes:
    from .entropy import encode_symbols

    sym, lo, scale = quantize(x, bits, stochastic=stochastic, seed=seed)
    head = bytes([int(bits), 1 if stochastic else 0]) + struct.pack("<ff", lo, scale)
    return head + encode_symbols(sym, 1 << int(bits), entropy)


def read_quant(r_: Reader, count: int, where: str) -> np.ndarray:
    bits = r_.u8(f"{where} quant bits")
    if not 1 <= bits <= 8:
        raise CodecError(f"{where}: quant bits {bits} not in 1..8")
    flags = r_.u8(f"{where} quant flags")
    if flags > 1:
        raise CodecError(f"{where}: quant flags {flags} invalid")
    lo = r_.f32(f"{where} quant zero point (lo)")
    scale = r_.f32(f"{where} quant scale")
    levels = (1 << bits) - 1
    if scale < 0 or abs(lo) + scale * levels > float(np.finfo(np.float32).max):
        raise CodecError(f"{where}: quant scale {scale} invalid (negative or range overflows fp32)")
    sym = read_symbols(r_, count, where, alphabet=1 << bits)
    return (np.float32(lo)
            + sym.astype(np.float32) * np.float32(scale)).astype(np.float32, copy=False)


@register_codec
class QuantCodec(Codec):
    """Dense tensors, b-bit uniform quantization per tensor + entropy coding (lossy)."""

    name = "quant"
    version = 1
    lossy = True

    def encode(self, arrays: Sequence[np.ndarray], bits: int = 8, *, stochastic: bool = False,
               seed=None) -> bytes:
        if not (isinstance(bits, (int, np.integer)) and 1 <= bits <= 8):
            raise CodecError(f"quant: bits must be an int in 1..8, got {bits!r}")
        return encode_value_frame(self, arrays, f"q{bits}", stochastic=stochastic, seed=seed)

    def decode(self, payload: bytes,
               expected_shapes: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
        return decode_value_frame(self, payload, expected_shapes, allowed=[DTYPE_CODES["quant"]])
