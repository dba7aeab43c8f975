"""``dense`` stage: every element as fp32, fp16 or bf16 (little-endian), one section per tensor.

fp32 is exact. fp16 and bf16 round to nearest, ties to even (bf16 by bit manipulation of the
fp32 pattern, so numpy needs no bfloat16 dtype); the relative error is at most 2**-11 (fp16,
normal range) and 2**-8 (bf16). fp16 subnormals lose relative precision (absolute error
<= 2**-25). Values that do not fit the wire dtype (|x| > 65504 in fp16) or are non-finite are
rejected at encode time, and non-finite values are rejected at decode time, unless
``allow_nonfinite=True`` is passed on both sides.

The raw-value helpers here (``encode_raw`` / ``decode_raw``) are the value stage that the
composite stages (sparse, masked, lowrank) reuse for their unquantized values.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .framing import DTYPE_CODES, DTYPE_NAMES, CodecError, max_header_bytes, numel, pack, unpack
from .registry import Codec, register_codec

__all__ = ["DenseCodec", "RAW_DTYPES", "ITEMSIZE", "encode_raw", "decode_raw", "f32_to_bf16_bits",
           "bf16_bits_to_f32"]

RAW_DTYPES = ("fp32", "fp16", "bf16")
ITEMSIZE = {"fp32": 4, "fp16": 2, "bf16": 2}
_EXP_MASK = {"fp32": (np.dtype("<u4"), 0x7F800000), "fp16": (np.dtype("<u2"), 0x7C00),
             "bf16": (np.dtype("<u2"), 0x7F80)}


def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """fp32 -> bf16 bit patterns (uint16), round to nearest even; NaN stays a (quiet) NaN."""
    u = np.ascontiguousarray(x, dtype="<f4").view("<u4")
    lsb = (u >> 16) & 1
    r = ((u + np.uint32(0x7FFF) + lsb) >> 16).astype("<u2")
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    if nan.any():
        r[nan] = ((u[nan] >> 16) | 0x0040).astype("<u2")
    return r


def bf16_bits_to_f32(b: np.ndarray) -> np.ndarray:
    return (b.astype("<u4") << 16).view("<f4")


def _as_f32(a, i: int) -> np.ndarray:
    arr = np.asarray(a)
    if arr.dtype.kind not in "fiub":
        raise CodecError(f"tensor {i}: dtype {arr.dtype} is not numeric")
    return np.asarray(arr, dtype="<f4", order="C")


def _has_nonfinite(bits: np.ndarray, wire: str) -> bool:
    _, m = _EXP_MASK[wire]
    return bool(((bits & m) == m).any())


def encode_raw(x: np.ndarray, wire: str, *, allow_nonfinite: bool = False,
               what: str = "tensor") -> bytes:
    """float32 array -> little-endian bytes of dtype ``wire`` (fp32/fp16/bf16)."""
    x = np.ascontiguousarray(x, dtype="<f4").reshape(-1)
    if wire == "fp32":
        out = x
    elif wire == "fp16":
        with np.errstate(over="ignore"):
            out = x.astype("<f2")
    elif wire == "bf16":
        out = f32_to_bf16_bits(x)
    else:
        raise CodecError(f"{what}: unknown raw dtype {wire!r} (one of {RAW_DTYPES})")
    if not allow_nonfinite:
        ut, _ = _EXP_MASK[wire]
        if _has_nonfinite(out.view(ut), wire):
            if _has_nonfinite(x.view("<u4"), "fp32"):
                raise CodecError(
                    f"{what}: non-finite values (pass allow_nonfinite=True to send them)")
            raise CodecError(
                f"{what}: values overflow {wire} (max |x| = {float(np.abs(x).max()):.6g})")
    return out.tobytes()


def decode_raw(buf, wire: str, count: int, *, allow_nonfinite: bool = False,
               what: str = "tensor") -> np.ndarray:
    """Inverse of :func:`encode_raw`; the caller has already checked ``len(buf)``."""
    if len(buf) != count * ITEMSIZE[wire]:
        raise CodecError(f"{what}: section length {len(buf)} != {count} x {ITEMSIZE[wire]} bytes "
                         f"for {wire}")
    ut, _ = _EXP_MASK[wire]
    bits = np.frombuffer(buf, dtype=ut, count=count)
    if not allow_nonfinite and _has_nonfinite(bits, wire):
        raise CodecError(f"{what}: non-finite values in {wire} data")
    if wire == "fp32":
        return bits.view("<f4").astype(np.float32)  # copy: writable, owns its memory
    if wire == "fp16":
        return bits.view("<f2").astype(np.float32)
    return bf16_bits_to_f32(bits)


@register_codec
class DenseCodec(Codec):
    """All tensors of one message, dense, in the given order. ``dtype``: fp32 | fp16 | bf16
    (one for all tensors, or one per tensor)."""

    name = "dense"
    version = 1
    lossy = False  # exact for fp32; fp16/bf16 are a precision the caller asks for

    def is_lossy(self, dtype: str | Sequence[str] = "fp32", **_) -> bool:
        ds = [dtype] if isinstance(dtype, str) else list(dtype)
        return any(d != "fp32" for d in ds)

    def encode(self, arrays: Sequence[np.ndarray], dtype: str | Sequence[str] = "fp32", *,
               allow_nonfinite: bool = False) -> bytes:
        arrays = list(arrays)
        dts = [dtype] * len(arrays) if isinstance(dtype, str) else list(dtype)
        if len(dts) != len(arrays):
            raise CodecError(f"dtype list has {len(dts)} entries for {len(arrays)} tensors")
        tensors, sections = [], []
        for i, (a, d) in enumerate(zip(arrays, dts)):
            if d not in RAW_DTYPES:
                raise CodecError(f"tensor {i}: dtype {d!r} not one of {RAW_DTYPES}")
            x = _as_f32(a, i)
            tensors.append((x.shape, DTYPE_CODES[d]))
            sections.append(encode_raw(x, d, allow_nonfinite=allow_nonfinite, what=f"tensor {i}"))
        return pack(self.codec_id, self.version, tensors, sections)

    def decode(self, payload: bytes, expected_shapes: Sequence[tuple[int, ...]], *,
               allow_nonfinite: bool = False) -> list[np.ndarray]:
        shapes = [tuple(int(d) for d in s) for s in expected_shapes]
        cap = max_header_bytes(shapes) + 4 * sum(numel(s) for s in shapes)
        f = unpack(
            payload,
            codec_id=self.codec_id,
            codec_versions=self.read_versions,
            expected_shapes=shapes,
            allowed_dtypes=[DTYPE_CODES[d] for d in RAW_DTYPES],
            n_sections=len(shapes),
            max_payload=cap,
        )
        if len(f.params):
            raise CodecError(f"params: dense takes none, got {len(f.params)} bytes")
        for i, (t, s) in enumerate(zip(f.tensors, f.sections)):
            need = t.numel * ITEMSIZE[DTYPE_NAMES[t.dtype]]
            if len(s) != need:
                raise CodecError(f"section {i} length {len(s)} != {need} for tensor {i} shape "
                                 f"{t.shape} {DTYPE_NAMES[t.dtype]}")
        out = []
        for i, (t, s) in enumerate(zip(f.tensors, f.sections)):
            x = decode_raw(s, DTYPE_NAMES[t.dtype], t.numel, allow_nonfinite=allow_nonfinite,
                           what=f"tensor {i}")
            out.append(x.reshape(t.shape))
        return out
