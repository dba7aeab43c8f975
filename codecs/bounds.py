"""Information-theoretic bounds (in bits) that payloads are measured against.

* positions: log2 C(n, k) (lgamma; exact to float precision for any n) - the bits needed to
  name one k-subset of n entries when all are equally likely;
* quantized symbols: k * H(q), H of their empirical distribution (what an ideal i.i.d.
  entropy coder with a free model achieves);
* raw values: 32 bits per fp32 value (16 per fp16/bf16 value when the sender chose that
  precision);
* low-rank factors: their value coding (FedPara's Hadamard factors send 2R(m+n) values),
  not a rank formula.

``payload_bound(payload, expected_shapes, masks=None)`` parses any fedsqueeze payload and
returns ``(bytes, bound_bytes, ratio)`` with ratio = bytes / bound_bytes (inf if the bound is
0 and bytes > 0, 1.0 if both are 0).

``observed_bound_bits(payload)`` is the same bound for a meter that holds neither the
receiver's shapes nor its masks (the shapes come from the payload's own header); it returns
None where the bound needs the receiver's masks (``masked`` with quantized or ternary values,
whose count k only the mask gives).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .framing import CODEC_IDS, DTYPE_NAMES, CodecError, Reader, peek_codec_id, unpack

__all__ = ["log2_binom", "positions_bound_bits", "entropy_bits", "raw_bits", "payload_bound_bits",
           "payload_bound", "observed_bound_bits"]


def log2_binom(n: int, k: int) -> float:
    """log2 C(n, k) via lgamma."""
    if k < 0 or k > n:
        raise ValueError(f"k={k} outside [0, n={n}]")
    if k == 0 or k == n:
        return 0.0
    return (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)) / math.log(2)


positions_bound_bits = log2_binom


def entropy_bits(symbols: np.ndarray) -> float:
    """k * H(q) in bits for the empirical distribution q of ``symbols`` (non-negative ints)."""
    s = np.asarray(symbols).reshape(-1)
    if s.size == 0:
        return 0.0
    c = np.bincount(s.astype(np.int64)).astype(np.float64)
    c = c[c > 0]
    return float(-(c * np.log2(c / s.size)).sum())


def raw_bits(k: int, dtype: str = "fp32") -> float:
    return {"fp32": 32.0, "fp16": 16.0, "bf16": 16.0}[dtype] * k


def _values_bits(r_: Reader, code: int, count: int, where: str) -> float:
    from .entropy import read_symbols

    name = DTYPE_NAMES.get(code)
    if name in ("fp32", "fp16", "bf16"):
        return raw_bits(count, name)
    if name == "quant":
        bits = r_.u8("bits")
        r_.u8("flags")
        r_.f32("lo")
        r_.f32("scale")
        return entropy_bits(read_symbols(r_, count, where, 1 << bits)) if 1 <= bits <= 8 else 0.0
    if name == "ternary":
        r_.u8("mode")
        r_.f32("scale")
        return entropy_bits(read_symbols(r_, count, where, 3))
    if name == "u8":
        return entropy_bits(read_symbols(r_, count, where))
    raise CodecError(f"{where}: no bound for dtype code {code}")


def payload_bound_bits(payload: bytes, expected_shapes: Sequence[tuple[int, ...]],
                       masks=None) -> float:
    """Bound in bits for the content of a payload (the payload is validated by decoding it)."""
    from .positions import read_positions
    from .registry import get_codec_by_id

    cid = peek_codec_id(payload)
    codec = get_codec_by_id(cid)
    shapes = [tuple(int(d) for d in s) for s in expected_shapes]
    # full validation through the codec's own decoder first
    if cid == CODEC_IDS["masked"]:
        codec.decode(payload, shapes, masks)
    else:
        codec.decode(payload, shapes)
    f = unpack(payload, codec_id=cid, codec_versions=codec.read_versions, expected_shapes=shapes)
    total = 0.0
    if cid == CODEC_IDS["positions"]:
        for t, s in zip(f.tensors, f.sections):
            total += log2_binom(t.numel, read_positions(Reader(s), t.numel).k)
    elif cid == CODEC_IDS["sparse"]:
        for i, t in enumerate(f.tensors):
            p = read_positions(Reader(f.sections[2 * i]), t.numel)
            total += log2_binom(t.numel, p.k) + _values_bits(Reader(f.sections[2 * i + 1]), t.dtype,
                                                             p.k, f"tensor {i}")
    elif cid == CODEC_IDS["masked"]:
        from .masked import _norm_masks

        ms = _norm_masks(masks, shapes)
        for i, (t, m, s) in enumerate(zip(f.tensors, ms, f.sections)):
            k = t.numel if m is None else int(np.count_nonzero(m))
            total += _values_bits(Reader(s), t.dtype, k, f"tensor {i}")
    else:  # dense, quant, ternary, lowrank, entropy: one values section per tensor
        for i, (t, s) in enumerate(zip(f.tensors, f.sections)):
            total += _values_bits(Reader(s), t.dtype, t.numel, f"tensor {i}")
    return total


def payload_bound(payload: bytes, expected_shapes: Sequence[tuple[int, ...]],
                  masks=None) -> tuple[int, float, float]:
    """(bytes, bound bytes, bytes / bound bytes) for any fedsqueeze payload."""
    b = payload_bound_bits(payload, expected_shapes, masks) / 8
    n = len(payload)
    ratio = n / b if b > 0 else (1.0 if n == 0 else math.inf)
    return n, b, ratio


_FIXED_WIDTH_BITS = {"fp32": 32, "fp16": 16, "bf16": 16}


def observed_bound_bits(payload: bytes, max_elements: int) -> float | None:
    """The bound in bits of a payload as seen on the way, without the receiver's expectation.

    Shapes are read from the payload's header; a ``masked`` payload's kept count k is its
    values section's length over the value width when the values are fixed-width (the
    receiver's mask gives the same k, or it rejects the payload), else None. A ``residual``
    payload is bounded by its own decoder (positions + entropy of its symbols + codebook).
    Raises CodecError for a malformed payload or one of more than ``max_elements`` values
    (the meter's cap: a header may not make it decode more than a model's worth)."""
    from .registry import get_codec_by_id

    cid = peek_codec_id(payload)
    codec = get_codec_by_id(cid)
    frame = unpack(payload, codec_id=cid, codec_versions=codec.read_versions,
                   max_elements=max_elements)
    shapes = [t.shape for t in frame.tensors]
    if cid == CODEC_IDS["residual"]:
        decoded = codec.decode(payload, shapes)
        return 8 * (decoded.bound() - decoded.header_bytes)
    if cid != CODEC_IDS["masked"]:
        return payload_bound_bits(payload, shapes)
    total = 0.0
    for t, section in zip(frame.tensors, frame.sections):
        width = _FIXED_WIDTH_BITS.get(DTYPE_NAMES.get(t.dtype, ""))
        if width is None:
            return None
        total += 8 * len(section)
    return total
