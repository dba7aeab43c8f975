"""``residual`` stage: a model, or a sparse quantized residual of it against a predictor
(ResFed's payload), with the version of the shared history it was encoded against.

It works on ONE flat float32 vector per model (the travelling tensors in canonical order,
concatenated); the caller chooses which entries travel (e.g. a global top-k) and the value
kind; the median quantizer (the ResFed reference's rule) may drop more survivors. Everything
runs in numpy float32 in a fixed operation order, so an encoder and a decoder on different
machines compute the same bits.

Payload (one framed payload per message; codec id 9, framing.py layout):

    tensor table   one entry ((N,), dtype code): fp32 (0) = full model, mask (5) = residual
    params         u8 flags (bit 0 residual, bit 1 reset history), u8 value kind
                   (0 fp32, 1 fp16, 2 uniform b-bit, 3 median codebook),
                   uvarint base sync count, 8 B base digest,
                   uvarint D, D x 8 B digests of the sender's reconstructions (up: G^, L^)
    sections       full:     [N fp32 values]
                   residual: [positions body (positions.py), values body]
    values body    fp32/fp16: raw;  uniform: quant.py body (bits, flags, lo, scale, symbols);
                   median:   u8 levels-per-sign L, 2L x f32 codebook, entropy body (alphabet 2L)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .bounds import entropy_bits, log2_binom
from .dense import decode_raw, encode_raw
from .entropy import encode_symbols, max_symbols_bytes, read_symbols
from .framing import DTYPE_CODES, CodecError, Reader, max_header_bytes, pack, unpack, write_uvarint
from .positions import encode_positions, max_positions_bytes, read_positions
from .quant import encode_quant, read_quant
from .registry import Codec, register_codec

__all__ = ["QUANTIZERS", "ResidualCodec", "ResidualHeader", "DecodedResidual",
           "median_quantize"]

QUANTIZERS = ("median", "uniform", "fp32", "fp16")
KIND = {"fp32": 0, "fp16": 1, "uniform": 2, "median": 3}
KIND_NAMES = {v: k for k, v in KIND.items()}
DIGEST_BYTES = 8
F32 = np.float32


# --------------------------------------------------------------------------- quantizers
def _lower_median(sorted_values: np.ndarray) -> np.float32:
    return F32(sorted_values[(sorted_values.size - 1) // 2])


def _median_levels(values: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """Recursive median splits `depth` deep of one sign's values (the reference's rule: split
    at the lower median, `> m` up, `<= m` down; a leaf becomes its lower median).
    Returns (level index per value in [0, 2^(depth-1)), codebook of 2^(depth-1) values)."""
    n_levels = 1 << (depth - 1)
    order = np.argsort(values, kind="stable")
    sv = values[order]
    level_sorted = np.zeros(sv.size, dtype=np.int64)
    book = np.zeros(n_levels, dtype=F32)

    def split(lo: int, hi: int, level: int, d: int) -> None:
        if hi <= lo:
            return
        m = _lower_median(sv[lo:hi])
        if d == depth:
            level_sorted[lo:hi] = level
            book[level] = m
            return
        cut = lo + int(np.searchsorted(sv[lo:hi], m, side="right"))
        width = 1 << (depth - d - 1)
        split(lo, cut, level, d + 1)
        split(cut, hi, level + width, d + 1)

    split(0, sv.size, 0, 1)
    levels = np.empty(sv.size, dtype=np.int64)
    levels[order] = level_sorted
    return levels, book


def median_quantize(kept: np.ndarray, qe: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The reference's median quantizer on the top-k survivors.

    Drops survivors below the median magnitude of the non-zero survivors (density ~ (1-s)/2),
    then codes each sign with recursive median splits `qe` deep (2^(qe-1) levels per sign).
    Returns (keep mask over `kept`, symbols uint8 of the kept ones, codebook float32 of 2L):
    symbols 0..L-1 = negative levels, L..2L-1 = positive levels.
    """
    kept = np.asarray(kept, dtype=F32)
    nz = np.abs(kept[kept != 0])
    n_levels = 1 << (qe - 1)
    book = np.zeros(2 * n_levels, dtype=F32)
    if nz.size == 0:
        return np.zeros(kept.size, dtype=bool), np.zeros(0, np.uint8), book
    md = _lower_median(np.sort(nz))
    keep = (np.abs(kept) >= md) & (kept != 0)
    x = kept[keep]
    sym = np.zeros(x.size, dtype=np.uint8)
    neg, pos = x < 0, x > 0
    if neg.any():
        lv, bk = _median_levels(x[neg], qe)
        sym[neg] = lv.astype(np.uint8)
        book[:n_levels] = bk
    if pos.any():
        lv, bk = _median_levels(x[pos], qe)
        sym[pos] = (lv + n_levels).astype(np.uint8)
        book[n_levels:] = bk
    return keep, sym, book


# --------------------------------------------------------------------------- payload
@dataclass
class ResidualHeader:
    residual: bool
    reset: bool
    kind: str
    base_count: int
    base_digest: bytes
    digests: list[bytes] = field(default_factory=list)

    def params(self) -> bytes:
        out = bytearray([int(self.residual) | (int(self.reset) << 1), KIND[self.kind]])
        write_uvarint(out, self.base_count)
        out += self.base_digest
        write_uvarint(out, len(self.digests))
        for d in self.digests:
            out += d
        return bytes(out)

    @classmethod
    def parse(cls, params) -> ResidualHeader:
        r = Reader(params, "residual params")
        flags = r.u8("flags")
        if flags > 3:
            raise CodecError(f"residual params: flags {flags} invalid")
        kind = r.u8("value kind")
        if kind not in KIND_NAMES:
            raise CodecError(f"residual params: value kind {kind} invalid")
        count = r.uvarint("base count")
        base = bytes(r.take(DIGEST_BYTES, "base digest"))
        n = r.uvarint("digest count", max_value=4)
        digests = [bytes(r.take(DIGEST_BYTES, f"digest {i}")) for i in range(n)]
        r.expect_end("residual params")
        if not flags & 1 and kind != KIND["fp32"]:
            raise CodecError("residual params: a full model travels as fp32")
        return cls(bool(flags & 1), bool(flags & 2), KIND_NAMES[kind], count, base, digests)


@register_codec
class ResidualCodec(Codec):
    """A full model or a sparse, quantized residual (see the module docstring).

    Not a list-of-tensors stage: `encode_full` / `encode_residual` / `decode` work on one
    flat vector of N entries (decode with expected_shapes = [(N,)])."""

    name = "residual"
    version = 1
    lossy = True

    def encode_full(self, vector: np.ndarray, header: ResidualHeader) -> bytes:
        n = vector.size
        return pack(self.codec_id, self.version, [((n,), DTYPE_CODES["fp32"])],
                    [encode_raw(vector, "fp32", what="residual full model")], header.params())

    def encode_residual(self, n: int, idx: np.ndarray, kept: np.ndarray, header: ResidualHeader,
                        *, qe: int = 1, bits: int = 4) -> bytes:
        """The residual's entries `kept` at sorted flat indices `idx` of N, quantized as
        `header.kind` (median: recursive median codebook `qe` deep, which drops the survivors
        below the median magnitude; uniform: `bits` per value; fp32/fp16 raw)."""
        idx = np.asarray(idx, dtype=np.int64)
        kept = np.asarray(kept, dtype=F32)
        if header.kind == "median":
            keep, sym, book = median_quantize(kept, qe)
            idx = idx[keep]
            levels = book.size // 2
            body = (bytes([levels]) + book.astype("<f4").tobytes()
                    + encode_symbols(sym, max(2, 2 * levels)))
        elif header.kind == "uniform":
            body = encode_quant(kept, bits)
        else:
            body = encode_raw(kept, header.kind, what="residual residual values")
        return pack(self.codec_id, self.version, [((n,), DTYPE_CODES["mask"])],
                    [encode_positions(idx, n), body], header.params())

    def restamp(self, payload: bytes, n: int, *, digests: list[bytes]) -> bytes:
        """The same payload with `digests` in its header (sections untouched)."""
        f = unpack(payload, codec_id=self.codec_id, codec_versions=self.read_versions,
                   expected_shapes=[(n,)])
        header = ResidualHeader.parse(f.params)
        header.digests = list(digests)
        return pack(self.codec_id, self.version, [((n,), f.tensors[0].dtype)], f.sections,
                    header.params())

    def decode(self, payload, expected_shapes, **_) -> DecodedResidual:
        """Validate and decode a payload for a model of N entries (expected_shapes = [(N,)])."""
        shapes = [tuple(int(d) for d in s) for s in expected_shapes]
        if len(shapes) != 1 or len(shapes[0]) != 1:
            raise CodecError("residual: expected_shapes must be [(N,)]")
        n = shapes[0][0]
        cap = (max_header_bytes(shapes, params_max=64, sections_per_tensor=2) + 4 * n
               + max_positions_bytes(n) + max_symbols_bytes(n) + 1024)
        f = unpack(payload, codec_id=self.codec_id, codec_versions=self.read_versions,
                   expected_shapes=shapes, max_payload=cap,
                   allowed_dtypes=[DTYPE_CODES["fp32"], DTYPE_CODES["mask"]])
        header = ResidualHeader.parse(f.params)
        code = f.tensors[0].dtype
        if header.residual != (code == DTYPE_CODES["mask"]):
            raise CodecError("residual: tensor dtype code does not match the residual flag")
        size = len(payload)
        if not header.residual:
            if len(f.sections) != 1:
                raise CodecError(f"residual: full model needs 1 section, got {len(f.sections)}")
            vector = decode_raw(f.sections[0], "fp32", n, what="residual full model")
            return DecodedResidual(header, n, size, f.header_bytes, vector=vector)
        if len(f.sections) != 2:
            raise CodecError(f"residual: residual needs 2 sections, got {len(f.sections)}")
        pos = read_positions(Reader(f.sections[0], "residual positions"), n, "residual positions")
        k = pos.k
        r = Reader(f.sections[1], "residual values")
        symbols = None
        if header.kind == "median":
            levels = r.u8("levels per sign")
            if levels < 1 or levels > 128 or levels & (levels - 1):
                raise CodecError(f"residual values: levels per sign {levels} invalid")
            book = np.frombuffer(bytes(r.take(8 * levels, "codebook")), dtype="<f4").astype(F32)
            if not np.all(np.isfinite(book)):
                raise CodecError("residual values: non-finite codebook")
            symbols = read_symbols(r, k, "residual symbols", alphabet=max(2, 2 * levels))
            values = book[symbols.astype(np.int64)]
            codebook = 1 + 8 * levels
        elif header.kind == "uniform":
            start = r.pos
            values = read_quant(r, k, "residual values")
            r.expect_end("residual values")
            codebook = 10  # bits, flags, lo, scale
            symbols = _uniform_symbols(bytes(f.sections[1])[start:], k)
        else:
            values = decode_raw(r.take(r.remaining, "values"), header.kind, k,
                                what="residual residual values")
            codebook = 0
        return DecodedResidual(header, n, size, f.header_bytes,
                               indices=pos.indices.astype(np.int64),
                               values=values.astype(F32, copy=False), symbols=symbols,
                               codebook_bytes=codebook)


def _uniform_symbols(body: bytes, k: int) -> np.ndarray:
    r = Reader(body, "residual values")
    bits = r.u8("bits")
    r.u8("flags")
    r.f32("lo")
    r.f32("scale")
    return read_symbols(r, k, "residual symbols", alphabet=1 << bits)


@dataclass
class DecodedResidual:
    """A decoded payload: a full model (`vector`) or a residual (`indices`, `values`)."""

    header: ResidualHeader
    n: int
    size: int                      # payload bytes
    header_bytes: int              # frame header incl. params (version, digests)
    vector: np.ndarray | None = None
    indices: np.ndarray | None = None
    values: np.ndarray | None = None
    symbols: np.ndarray | None = None
    codebook_bytes: int = 0

    @property
    def k(self) -> int:
        return self.n if self.indices is None else int(self.indices.size)

    def bound(self) -> float:
        """(log2 C(N,k) + k H(q)) / 8 + codebook + header, in bytes (the acceptance yardstick);
        raw values count 32 (16) bits each; a full model is its 4N bytes + header."""
        if self.indices is None:
            return 4.0 * self.n + self.header_bytes
        bits = log2_binom(self.n, self.k)
        if self.symbols is not None:
            bits += entropy_bits(self.symbols)
        else:
            bits += (32 if self.header.kind == "fp32" else 16) * self.k
        return bits / 8 + self.codebook_bytes + self.header_bytes

