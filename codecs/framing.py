"""Payload framing: the one module that owns the byte layout of every fedsqueeze payload.

Layout (all integers little-endian; ``uvarint`` = unsigned LEB128, at most 10 bytes)::

    offset  size     field
    0       2        magic             b"FZ"
    2       1        format version    FORMAT_VERSION (this file's layout)
    3       1        codec id          see CODEC_IDS below
    4       1        codec version     the stage's own body-format version
    5       uvarint  tensor count T
            T x      tensor entry:     u8 ndim (<= MAX_NDIM), ndim x uvarint dims,
                                       u8 dtype code (see DTYPE_CODES)
            uvarint  params length P,  then P bytes of codec parameters
            uvarint  section count S,  then S x uvarint section lengths
            ...      the S sections, back to back; they end exactly at the end of the payload

A typical one-tensor header is 10-20 bytes.  Section contents belong to the codec named by
the codec id; the tensor table is the receiver-checkable description of what the payload
decodes to (shape + how the values are coded).

Codec-id table (one byte; never reuse a retired id)::

    0        reserved (invalid)
    1        dense       fp32 / fp16 / bf16 raw values                  (lossless for fp32)
    2        quant       uniform b-bit quantization + entropy coding   (lossy)
    3        ternary     sign + one scale per tensor                   (lossy)
    4        positions   masks / index sets (bitmap, Rice, ANS, auto)   (lossless)
    5        sparse      positions + values                             (values decide)
    6        masked      values in the order of a mask both sides hold  (values decide)
    7        lowrank     list of factor matrices + value coding         (values decide)
    8        entropy     uint8 symbols, ANS / zstd / raw by size        (lossless)
    9        residual    model or sparse quantized residual + history   (lossy)
    10-127   reserved for future fedsqueeze stages
    128-255  free for out-of-tree stages registered with ``register_codec``

Dtype codes (one byte per tensor in the table; it says how that tensor's *values* are coded,
whatever the codec): 0 fp32, 1 fp16, 2 bf16, 3 quantized (b-bit symbols + scale, quant.py),
4 ternary (ternary.py), 5 mask / positions only, 6 uint8 symbols (entropy.py).  Each codec
lists the codes it accepts; anything else is rejected.

Version policy:

* ``FORMAT_VERSION`` covers this header layout only.  Any change to it that an old decoder
  would misread bumps it; decoders accept exactly ``SUPPORTED_FORMAT_VERSIONS`` and reject
  everything else with ``CodecError`` (no best-effort parsing).  Adding a codec id or a dtype
  code is not a layout change.
* Each codec carries its own ``version`` (in the header and in the Flower ``stype``,
  ``fedsqueeze/<name>@<version>``).  A change in a codec's section/params layout bumps that
  codec's version; a decoder lists the codec versions it can read (normally just the
  current one) and rejects others.
* Payloads are a wire format, not an archive: sender and receiver of one run use the same
  fedsqueeze version.  No compatibility shims are promised across versions.

Decoding validates the entire header before any section is touched and before anything is
allocated: magic, versions, codec id, tensor count and every shape against the receiver's
expectation (``expected_shapes`` or ``max_elements``), dtype codes, params length, section
count and lengths (they must add up to exactly the bytes present: truncation and trailing
garbage are both errors).  The caller checks ``len(payload)`` against the largest valid
payload for its expectation before calling :func:`unpack` (``oversized``).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "MAGIC",
    "FORMAT_VERSION",
    "SUPPORTED_FORMAT_VERSIONS",
    "CODEC_IDS",
    "DTYPE_CODES",
    "CodecError",
    "TensorEntry",
    "Frame",
    "Reader",
    "pack",
    "unpack",
    "peek_codec_id",
    "write_uvarint",
    "uvarint_size",
    "numel",
]

MAGIC = b"FZ"
FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS = frozenset({1})
FIXED_HEADER = 5
MAX_NDIM = 16
MAX_DIM = 1 << 48
MAX_PARAMS = 1 << 16

CODEC_IDS: dict[str, int] = {
    "dense": 1,
    "quant": 2,
    "ternary": 3,
    "positions": 4,
    "sparse": 5,
    "masked": 6,
    "lowrank": 7,
    "entropy": 8,
    "residual": 9,
}

DTYPE_CODES: dict[str, int] = {
    "fp32": 0,
    "fp16": 1,
    "bf16": 2,
    "quant": 3,
    "ternary": 4,
    "mask": 5,
    "u8": 6,
}
DTYPE_NAMES: dict[int, str] = {v: k for k, v in DTYPE_CODES.items()}


class CodecError(ValueError):
    """A payload (or an encode request) is invalid. The message names the offending field."""


def numel(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


# --------------------------------------------------------------------------- varints
def uvarint_size(v: int) -> int:
    n = 1
    while v >= 0x80:
        v >>= 7
        n += 1
    return n


def write_uvarint(out: bytearray, v: int) -> None:
    v = int(v)
    if v < 0:
        raise CodecError(f"cannot write negative varint {v}")
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)


def as_buffer(payload) -> memoryview:
    """A flat byte view of bytes / bytearray / memoryview / 1-D uint8 array (else CodecError)."""
    if isinstance(payload, np.ndarray):
        if payload.dtype != np.uint8 or payload.ndim != 1:
            raise CodecError(
                f"payload array must be 1-D uint8, got {payload.dtype} {payload.shape}")
        payload = np.ascontiguousarray(payload)
    elif not isinstance(payload, (bytes, bytearray, memoryview)):
        raise CodecError(f"payload must be bytes, got {type(payload).__name__}")
    mv = memoryview(payload)
    if mv.format != "B" or mv.ndim != 1:
        try:
            mv = mv.cast("B")
        except TypeError as e:
            raise CodecError(f"payload buffer not byte-addressable: {e}") from None
    return mv


class Reader:
    """Bounds-checked little-endian reader over a buffer; every read names its field."""

    __slots__ = ("buf", "pos", "end", "where")

    def __init__(self, buf, where: str = "payload", start: int = 0, end: int | None = None):
        self.buf = as_buffer(buf)
        self.pos = start
        self.end = len(self.buf) if end is None else end
        self.where = where

    @property
    def remaining(self) -> int:
        return self.end - self.pos

    def _need(self, n: int, field: str) -> None:
        if n > self.end - self.pos:
            raise CodecError(
                f"{self.where}: truncated reading {field} "
                f"(need {n} bytes, {self.end - self.pos} left)"
            )

    def u8(self, field: str) -> int:
        self._need(1, field)
        v = self.buf[self.pos]
        self.pos += 1
        return v

    def uvarint(self, field: str, max_value: int = (1 << 63) - 1) -> int:
        v = 0
        shift = 0
        for i in range(10):
            self._need(1, field)
            b = self.buf[self.pos]
            self.pos += 1
            v |= (b & 0x7F) << shift
            if not b & 0x80:
                if i > 0 and b == 0:
                    raise CodecError(f"{self.where}: {field} varint is not minimally encoded")
                if v > max_value:
                    raise CodecError(f"{self.where}: {field} = {v} exceeds the maximum {max_value}")
                return v
            shift += 7
        raise CodecError(f"{self.where}: {field} varint longer than 10 bytes")

    def f32(self, field: str, finite: bool = True) -> float:
        self._need(4, field)
        (v,) = struct.unpack_from("<f", self.buf, self.pos)
        self.pos += 4
        if finite and not np.isfinite(v):
            raise CodecError(f"{self.where}: {field} is not finite ({v})")
        return float(v)

    def take(self, n: int, field: str) -> memoryview:
        self._need(n, field)
        mv = self.buf[self.pos : self.pos + n]
        self.pos += n
        return mv

    def expect_end(self, field: str = "end") -> None:
        if self.pos != self.end:
            raise CodecError(f"{self.where}: {self.end - self.pos} trailing bytes after {field}")


# --------------------------------------------------------------------------- frames
@dataclass(frozen=True)
class TensorEntry:
    shape: tuple[int, ...]
    dtype: int

    @property
    def numel(self) -> int:
        return numel(self.shape)


@dataclass
class Frame:
    codec_id: int
    codec_version: int
    tensors: list[TensorEntry]
    params: memoryview
    sections: list[memoryview]
    header_bytes: int


def pack(
    codec_id: int,
    codec_version: int,
    tensors: Sequence[tuple[Sequence[int], int]],
    sections: Sequence[bytes | bytearray | memoryview],
    params: bytes = b"",
) -> bytes:
    """Build a payload. ``tensors`` = [(shape, dtype_code)], ``sections`` = raw section bytes."""
    if not 0 < codec_id < 256 or not 0 <= codec_version < 256:
        raise CodecError(f"codec id {codec_id} / version {codec_version} out of range")
    h = bytearray(MAGIC)
    h.append(FORMAT_VERSION)
    h.append(codec_id)
    h.append(codec_version)
    write_uvarint(h, len(tensors))
    for shape, dt in tensors:
        if len(shape) > MAX_NDIM:
            raise CodecError(f"tensor with {len(shape)} dims exceeds MAX_NDIM={MAX_NDIM}")
        h.append(len(shape))
        for d in shape:
            if not 0 <= int(d) <= MAX_DIM:
                raise CodecError(f"dimension {d} out of range")
            write_uvarint(h, int(d))
        h.append(dt)
    if len(params) > MAX_PARAMS:
        raise CodecError(f"params of {len(params)} bytes exceed MAX_PARAMS={MAX_PARAMS}")
    write_uvarint(h, len(params))
    h += params
    write_uvarint(h, len(sections))
    for s in sections:
        write_uvarint(h, len(s))
    return b"".join([bytes(h), *[bytes(s) if not isinstance(s, bytes) else s for s in sections]])


def peek_codec_id(payload) -> int:
    """Codec id of a payload after checking magic and format version (nothing else)."""
    r = Reader(payload)
    _fixed(r)
    return r.buf[3]


def _fixed(r: Reader) -> tuple[int, int]:
    if r.remaining < FIXED_HEADER:
        raise CodecError(
            f"payload truncated: {r.remaining} bytes, the fixed header alone is {FIXED_HEADER}")
    magic = bytes(r.take(2, "magic"))
    if magic != MAGIC:
        raise CodecError(f"bad magic {magic!r} (expected {MAGIC!r})")
    fmt = r.u8("format version")
    if fmt not in SUPPORTED_FORMAT_VERSIONS:
        raise CodecError(
            f"unsupported format version {fmt} (supported: {sorted(SUPPORTED_FORMAT_VERSIONS)})")
    return r.u8("codec id"), r.u8("codec version")


def unpack(
    payload,
    *,
    codec_id: int,
    codec_versions: Sequence[int],
    expected_shapes: Sequence[Sequence[int]] | None = None,
    max_elements: int | None = None,
    allowed_dtypes: Sequence[int] | None = None,
    n_sections: int | None = None,
    max_payload: int | None = None,
) -> Frame:
    """Parse and validate a header. Sections are zero-copy views into ``payload``.

    Exactly one of ``expected_shapes`` (shapes must match, in order) or ``max_elements``
    (total element cap) must be given.  ``n_sections`` fixes the section count.
    """
    if (expected_shapes is None) == (max_elements is None):
        raise CodecError("decode needs exactly one of expected_shapes / max_elements")
    payload = as_buffer(payload)
    if max_payload is not None and len(payload) > max_payload:
        raise CodecError(f"payload oversized: {len(payload)} bytes > {max_payload} allowed "
                         f"for the expected shapes")
    r = Reader(payload)
    cid, cver = _fixed(r)
    if cid != codec_id:
        raise CodecError(f"codec id {cid} does not match the decoder's codec id {codec_id}")
    if cver not in codec_versions:
        raise CodecError(f"codec version {cver} unsupported (supported: {list(codec_versions)})")
    if expected_shapes is not None:
        exp = [tuple(int(d) for d in s) for s in expected_shapes]
        t = r.uvarint("tensor count", max_value=len(exp))
        if t != len(exp):
            raise CodecError(f"tensor count {t} != expected {len(exp)}")
    else:
        exp = None
        t = r.uvarint("tensor count", max_value=min(r.remaining, 1 << 20))
    tensors: list[TensorEntry] = []
    total = 0
    for i in range(t):
        nd = r.u8(f"tensor {i} ndim")
        if nd > MAX_NDIM:
            raise CodecError(f"tensor {i} ndim {nd} exceeds MAX_NDIM={MAX_NDIM}")
        if exp is not None and nd != len(exp[i]):
            raise CodecError(f"tensor {i} ndim {nd} != expected {len(exp[i])} (shape {exp[i]})")
        shape = []
        for j in range(nd):
            d = r.uvarint(f"tensor {i} dim {j}", max_value=MAX_DIM)
            if exp is not None and d != exp[i][j]:
                raise CodecError(
                    f"tensor {i} dim {j} = {d} != expected {exp[i][j]} (shape {exp[i]})")
            shape.append(d)
        dt = r.u8(f"tensor {i} dtype")
        if dt not in DTYPE_NAMES or (allowed_dtypes is not None and dt not in allowed_dtypes):
            raise CodecError(f"tensor {i} dtype code {dt} not valid for this codec")
        shape_t = tuple(shape)
        total += numel(shape_t)
        if max_elements is not None and total > max_elements:
            raise CodecError(f"tensor {i} shape {shape_t}: total element count {total} "
                             f"exceeds max_elements={max_elements}")
        tensors.append(TensorEntry(shape_t, dt))
    plen = r.uvarint("params length", max_value=MAX_PARAMS)
    params = r.take(plen, "params")
    ns = r.uvarint("section count", max_value=r.remaining)
    if n_sections is not None and ns != n_sections:
        raise CodecError(f"section count {ns} != {n_sections} expected by this codec")
    lens = [r.uvarint(f"section {k} length", max_value=len(payload)) for k in range(ns)]
    header_bytes = r.pos
    if sum(lens) > r.remaining:
        raise CodecError(
            f"payload truncated: sections declare {sum(lens)} bytes, {r.remaining} present")
    if sum(lens) < r.remaining:
        raise CodecError(
            f"trailing garbage: {r.remaining - sum(lens)} bytes after the last section")
    sections = [r.take(n, f"section {k}") for k, n in enumerate(lens)]
    return Frame(cid, cver, tensors, params, sections, header_bytes)


def max_header_bytes(expected_shapes: Sequence[Sequence[int]], params_max: int = 0,
                     sections_per_tensor: int = 1, extra_sections: int = 1) -> int:
    """Upper bound on the header size for these shapes (used for the ``oversized`` check)."""
    t = len(expected_shapes)
    n = FIXED_HEADER + 10 + 10 + params_max + 10
    n += sum(2 + 10 * len(s) for s in expected_shapes)
    n += 10 * (sections_per_tensor * t + extra_sections)
    return n
