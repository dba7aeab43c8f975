"""``entropy`` stage: lossless coding of small-alphabet symbols (quantized values, ternary signs).

Three methods, the smallest actual output wins (``method="auto"``):

* ``raw``: fixed-width bit packing, ceil(log2 A) bits per symbol (A = alphabet size);
* ``ans``: constriction ANS with the empirical histogram, sent as a table of A uvarints
  (counts scaled so the largest is 4095; absent symbols 0).  ~count*H(q) + table + 4..8 B;
* ``zstd``: zstandard (level 3, no content size, no checksum) over one byte per symbol;
  wins on structured symbol streams (runs, periodicity) that an i.i.d. model misses.

Body layout::

    u8 method (0 raw, 1 ans, 2 zstd), uvarint alphabet size A (2..256), then
    raw:  ceil(count*bits/8) bytes, padding bits zero
    ans:  A x uvarint frequency, then the ANS words (uint32 little-endian)
    zstd: one zstd frame, nothing after it

``count`` (the number of symbols) is never read from the body: the caller knows it from the
receiver's expectation, which bounds every allocation.  Decoding rejects symbols >= A,
frames that declare a content size, trailing bytes and ANS streams not consumed exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .framing import (
    DTYPE_CODES,
    CodecError,
    Reader,
    max_header_bytes,
    numel,
    pack,
    unpack,
    write_uvarint,
)
from .registry import Codec, register_codec

__all__ = ["encode_symbols", "decode_symbols", "read_symbols", "max_symbols_bytes",
           "symbol_entropy_bits", "EntropyCodec"]

ENTROPY_METHODS = ("raw", "ans", "zstd")
_RAW, _ANS, _ZSTD = 0, 1, 2
_FREQ_MAX = 4095


def _bits_for(alphabet: int) -> int:
    return max(1, (alphabet - 1).bit_length())


def symbol_entropy_bits(sym: np.ndarray, alphabet: int) -> float:
    """count * H(empirical distribution) in bits."""
    c = np.bincount(sym.reshape(-1), minlength=alphabet).astype(np.float64)
    c = c[c > 0]
    n = c.sum()
    if n == 0:
        return 0.0
    return float(-(c * np.log2(c / n)).sum())


def _pack_fixed(sym: np.ndarray, bits: int) -> bytes:
    if bits == 8:
        return sym.astype(np.uint8).tobytes()
    sh = np.arange(bits, dtype=np.uint8)
    b = ((sym.astype(np.uint8)[:, None] >> sh) & 1).astype(np.uint8)
    return np.packbits(b.reshape(-1), bitorder="little").tobytes()


def _unpack_fixed(buf, count: int, bits: int, where: str) -> np.ndarray:
    need = (count * bits + 7) // 8
    if len(buf) != need:
        raise CodecError(f"{where}: raw symbol stream is {len(buf)} bytes, expected {need}")
    a = np.frombuffer(buf, dtype=np.uint8)
    if bits == 8:
        return a.copy()
    b = np.unpackbits(a, bitorder="little")
    if b[count * bits :].any():
        raise CodecError(f"{where}: raw symbol padding bits not zero")
    b = b[: count * bits].reshape(count, bits)
    w = (1 << np.arange(bits, dtype=np.uint8)).astype(np.uint8)
    return (b * w).sum(axis=1, dtype=np.uint8) if count else np.zeros(0, np.uint8)


def _freq_table(sym: np.ndarray, alphabet: int) -> np.ndarray:
    c = np.bincount(sym, minlength=alphabet).astype(np.float64)
    f = np.where(c > 0, np.maximum(1, np.ceil(c * _FREQ_MAX / c.max())), 0).astype(np.int64)
    return f


def _model(freq: np.ndarray):
    import constriction

    return constriction.stream.model.Categorical(freq.astype(np.float64), perfect=False)


def _enc_ans(sym: np.ndarray, alphabet: int) -> bytes:
    import constriction

    f = _freq_table(sym, alphabet)
    out = bytearray()
    for v in f.tolist():
        write_uvarint(out, v)
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(sym.astype(np.int32), _model(f))
    out += coder.get_compressed().astype("<u4").tobytes()
    return bytes(out)


def _zstd_c():
    import zstandard

    return zstandard.ZstdCompressor(level=3, write_content_size=False, write_checksum=False,
                                    write_dict_id=False)


def encode_symbols(sym: np.ndarray, alphabet: int, method: str = "auto") -> bytes:
    """Body for uint8 symbols in [0, alphabet)."""
    if not 2 <= alphabet <= 256:
        raise CodecError(f"entropy: alphabet size {alphabet} not in 2..256")
    sym = np.ascontiguousarray(sym).reshape(-1)
    if sym.dtype != np.uint8:
        if sym.size and (sym.min() < 0 or sym.max() >= alphabet):
            raise CodecError(f"entropy: symbols outside [0, {alphabet})")
        sym = sym.astype(np.uint8)
    elif sym.size and int(sym.max()) >= alphabet:
        raise CodecError(f"entropy: symbols outside [0, {alphabet})")
    bits = _bits_for(alphabet)
    cands: dict[int, bytes] = {}
    if method in ("auto", "raw") or sym.size == 0:
        cands[_RAW] = _pack_fixed(sym, bits)
    if sym.size and method in ("auto", "ans"):
        est = symbol_entropy_bits(sym, alphabet) / 8 + 1.5 * alphabet + 8
        if method == "ans" or est < len(cands[_RAW]):
            cands[_ANS] = _enc_ans(sym, alphabet)
    if sym.size and method in ("auto", "zstd"):
        cands[_ZSTD] = _zstd_c().compress(sym.tobytes())
    if not cands:
        raise CodecError(
            f"entropy: unknown method {method!r} (one of {ENTROPY_METHODS} or 'auto')")
    m = min(cands, key=lambda k: len(cands[k]))
    head = bytearray([m])
    write_uvarint(head, alphabet)
    return bytes(head) + cands[m]


def _fatal(e: BaseException) -> bool:
    return isinstance(e, (KeyboardInterrupt, SystemExit, MemoryError))


def read_symbols(r_: Reader, count: int, where: str = "symbols",
                 alphabet: int | None = None) -> np.ndarray:
    """Decode a symbol body filling the rest of ``r_``; ``alphabet`` (if given) must match."""
    m = r_.u8(f"{where} entropy method")
    a = r_.uvarint(f"{where} alphabet size", max_value=256)
    if a < 2 or (alphabet is not None and a != alphabet):
        raise CodecError(f"{where}: alphabet size {a} invalid"
                         + (f" (expected {alphabet})" if alphabet else ""))
    data = r_.take(r_.remaining, f"{where} symbol stream")
    if m == _RAW:
        sym = _unpack_fixed(data, count, _bits_for(a), where)
        if count and int(sym.max()) >= a:
            raise CodecError(f"{where}: raw symbols outside the alphabet {a}")
        return sym
    if count == 0:
        raise CodecError(f"{where}: method {m} for zero symbols")
    if m == _ANS:
        import constriction

        rr = Reader(data, where)
        freq = np.array([rr.uvarint(f"{where} frequency {s}", max_value=_FREQ_MAX)
                         for s in range(a)], np.int64)
        if freq.sum() == 0:
            raise CodecError(f"{where}: frequency table is all zero")
        words = rr.take(rr.remaining, f"{where} ANS stream")
        if len(words) % 4:
            raise CodecError(f"{where}: ANS stream length {len(words)} is not a multiple of 4")
        try:
            coder = constriction.stream.stack.AnsCoder(
                np.frombuffer(words, dtype="<u4").astype(np.uint32))
            sym = np.asarray(coder.decode(_model(freq), count))
            empty = coder.is_empty()
        except BaseException as e:
            if _fatal(e):
                raise
            raise CodecError(f"{where}: invalid ANS stream ({type(e).__name__}: {e})") from None
        if not empty:
            raise CodecError(f"{where}: ANS stream not consumed exactly")
        if sym.size != count or (count and (sym.min() < 0 or sym.max() >= a)):
            raise CodecError(f"{where}: ANS produced invalid symbols")
        return sym.astype(np.uint8)
    if m == _ZSTD:
        import zstandard

        data = bytes(data)
        try:
            fp = zstandard.get_frame_parameters(data)
            if fp.content_size != zstandard.CONTENTSIZE_UNKNOWN or fp.dict_id != 0:
                raise CodecError(f"{where}: zstd frame declares a content size or dictionary")
            if fp.window_size > max(1 << 20, 2 * count):
                raise CodecError(f"{where}: zstd window size {fp.window_size} too large")
            out = zstandard.ZstdDecompressor().decompress(data, max_output_size=count)
            dobj = zstandard.ZstdDecompressor().decompressobj()
            dobj.decompress(data)
            trailing = len(dobj.unused_data) if dobj.eof else -1
        except CodecError:
            raise
        except BaseException as e:
            if _fatal(e):
                raise
            raise CodecError(f"{where}: invalid zstd stream ({type(e).__name__}: {e})") from None
        if trailing != 0:
            raise CodecError(f"{where}: zstd stream has trailing bytes or is incomplete")
        if len(out) != count:
            raise CodecError(f"{where}: zstd gave {len(out)} symbols, expected {count}")
        sym = np.frombuffer(out, dtype=np.uint8).copy()
        if count and int(sym.max()) >= a:
            raise CodecError(f"{where}: zstd symbols outside the alphabet")
        return sym
    raise CodecError(f"{where}: unknown entropy method {m}")


def decode_symbols(body, count: int, alphabet: int | None = None,
                   where: str = "symbols") -> np.ndarray:
    return read_symbols(Reader(body, where), count, where, alphabet)


def max_symbols_bytes(count: int) -> int:
    """Upper bound on a legitimate body for ``count`` symbols (auto never exceeds raw + head)."""
    return count + 16 + 3 * 256


@register_codec
class EntropyCodec(Codec):
    """uint8 symbol tensors (each with an alphabet size) <-> bytes, lossless."""

    name = "entropy"
    version = 1
    lossy = False

    def encode(self, arrays: Sequence[np.ndarray], *, alphabet: int = 256,
               method: str = "auto") -> bytes:
        tensors, sections = [], []
        for a in arrays:
            a = np.asarray(a)
            tensors.append((a.shape, DTYPE_CODES["u8"]))
            sections.append(encode_symbols(a, alphabet, method))
        return pack(self.codec_id, self.version, tensors, sections)

    def decode(self, payload: bytes, expected_shapes: Sequence[tuple[int, ...]], *,
               alphabet: int | None = None) -> list[np.ndarray]:
        shapes = [tuple(int(d) for d in s) for s in expected_shapes]
        cap = max_header_bytes(shapes) + sum(max_symbols_bytes(numel(s)) for s in shapes)
        f = unpack(payload, codec_id=self.codec_id, codec_versions=self.read_versions,
                   expected_shapes=shapes, allowed_dtypes=[DTYPE_CODES["u8"]],
                   n_sections=len(shapes), max_payload=cap)
        if len(f.params):
            raise CodecError("params: entropy takes none")
        return [decode_symbols(s, t.numel, alphabet, f"tensor {i}").reshape(t.shape)
                for i, (t, s) in enumerate(zip(f.tensors, f.sections))]
