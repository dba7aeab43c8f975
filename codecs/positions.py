"""``positions`` stage: which of n entries are kept (a mask / a sorted index set), near log2 C(n,k).

Three coders behind one interface, plus ``auto``:

* ``bitmap``: ``np.packbits`` (little bit order), ceil(n/8) bytes.  Best near density 0.5.
* ``rice``: gaps between kept indices, Golomb-Rice coded with one parameter r per block of
  gaps (2**5 or 2**7 gaps, or a single block: the encoder takes the cheapest of the three,
  computed exactly from the gaps; each block's r is the best of the three around the optimum
  for its mean gap).  Real pruning masks are clustered (a pruned input pixel empties a column
  of an fc layer), and per-block parameters follow the local density, which puts Rice within
  3% of log2 C(n,k) on them too.  Stored as streams so both directions are vectorised: the
  block parameters (r_min + fixed-width deltas), the unary quotients (q zeros then a one, per
  gap) and the remainders (r bits per gap, grouped by r ascending).  O(k) work, not O(n):
  best at low density.
* ``ans``: the bitmap's bytes as symbols of a 256-letter alphabet, coded with constriction's
  ANS under the i.i.d. Bernoulli(k/n) model (P(byte) = p^popcount (1-p)^(8-popcount)); both
  sides build the model from (n, k), so no table is sent.  Within a few bytes of n*H(k/n).
* ``auto``: picks the coder with the smallest *estimated* size for (n, k) (closed forms in
  :func:`estimate_bytes`; nothing is encoded to choose).  Where Rice's closed form is within
  25% of the best, Rice's size is estimated from a sample of the real gaps (64 windows, about
  32k kept entries), since clustered real masks code well below the uniform estimate; only
  when the sample says Rice wins is its exact size computed from all gaps (no encoding).

Body layout (inside a section of a frame; varints as in framing.py)::

    u8 method (0 trivial: k == 0 or k == n, 1 bitmap, 2 rice, 3 ans), uvarint k, then
    bitmap: ceil(n/8) bytes, padding bits zero
    rice:   u8 log2 block (63: one block), u8 r_min, u8 width w, ceil(blocks*w/8) bytes of
            per-block r - r_min (w bits each), uvarint U, U bytes unary stream, then the
            remainders: for each r present, ascending, the r-bit remainders of the gaps coded
            with that r, in index order, all bits back to back (LSB first), zero-padded
    ans:    the ANS words, uint32 little-endian

Decoding checks k <= n, the stream lengths, popcount == k, zero padding, that every index is
< n (Rice indices are increasing by construction: gaps are >= 0; parameters beyond log2 n
and gaps past n are rejected before the cumulative sum), and that the ANS stream is
consumed exactly.  Output size is bounded by the receiver's n.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .framing import (
    DTYPE_CODES,
    CodecError,
    Reader,
    max_header_bytes,
    numel,
    pack,
    unpack,
    uvarint_size,
    write_uvarint,
)
from .registry import Codec, register_codec

__all__ = [
    "METHODS",
    "Positions",
    "as_positions",
    "encode_positions",
    "decode_positions",
    "estimate_bytes",
    "choose_method",
    "rice_parameter",
    "positions_data_bytes",
    "body_method",
    "max_positions_bytes",
    "PositionsCodec",
]

METHODS = ("bitmap", "rice", "ans")
_M_TRIVIAL, _M_BITMAP, _M_RICE, _M_ANS = 0, 1, 2, 3
_METHOD_CODE = {"bitmap": _M_BITMAP, "rice": _M_RICE, "ans": _M_ANS}
_MAX_N = 1 << 48
_MAX_RICE_R = 48
_RICE_RECHECK = 1.25  # see _choose_for
_RICE_SAMPLE, _RICE_WINDOWS = 1 << 15, 64  # kept entries auto samples, in that many windows
_POPCOUNT = (np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1)
             .sum(axis=1).astype(np.uint8))


class Positions:
    """A set of kept indices out of n; holds a bool mask and/or sorted int64 indices."""

    __slots__ = ("n", "_mask", "_idx", "_k")

    def __init__(self, n: int, mask: np.ndarray | None = None, indices: np.ndarray | None = None,
                 k: int | None = None):
        self.n = int(n)
        self._mask = mask
        self._idx = indices
        self._k = k

    @property
    def k(self) -> int:
        if self._k is None:
            self._k = (int(self._idx.size) if self._idx is not None
                       else int(np.count_nonzero(self._mask)))
        return self._k

    @property
    def mask(self) -> np.ndarray:
        if self._mask is None:
            m = np.zeros(self.n, dtype=bool)
            m[self._idx] = True
            self._mask = m
        return self._mask

    @property
    def indices(self) -> np.ndarray:
        if self._idx is None:
            self._idx = np.flatnonzero(self._mask)
        return self._idx

    @property
    def has_mask(self) -> bool:
        return self._mask is not None


def as_positions(mask_or_indices, n: int | None = None) -> Positions:
    """A bool mask (any shape, flattened in C order) or strictly increasing indices + n."""
    if isinstance(mask_or_indices, Positions):
        return mask_or_indices
    a = np.asarray(mask_or_indices)
    if a.dtype == bool:
        m = np.ascontiguousarray(a).reshape(-1)
        if n is not None and m.size != n:
            raise CodecError(f"positions: mask has {m.size} entries, n = {n}")
        return Positions(m.size, mask=m)
    if n is None:
        raise CodecError("positions: index input needs n")
    if a.dtype.kind not in "iu":
        raise CodecError(f"positions: indices must be integers or a bool mask, got {a.dtype}")
    idx = a.reshape(-1).astype(np.int64, copy=False)
    if idx.size:
        if idx[0] < 0 or idx[-1] >= n:
            raise CodecError(f"positions: index out of range [0, {n})")
        if idx.size > 1 and not bool(np.all(idx[1:] > idx[:-1])):
            raise CodecError("positions: indices must be strictly increasing")
    return Positions(int(n), indices=idx)


# --------------------------------------------------------------------------- estimates
def _h2(p: float) -> float:
    if p <= 0.0 or p >= 1.0:
        return 0.0
    return -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


def _rice_expected_bits(k: int, p: float, r: int) -> float:
    a = (1.0 - p) ** (1 << r)
    eq = a / (1.0 - a) if a < 1.0 else float("inf")
    return k * (r + 1 + eq)


def rice_parameter(n: int, k: int) -> int:
    """r minimising the expected Rice length for geometric gaps with p = k/n."""
    if k <= 0 or k >= n:
        return 0
    p = k / n
    mean = (1 - p) / p
    r0 = max(0, int(math.log2(max(mean * math.log(2), 1.0))))
    cands = [r for r in range(max(0, r0 - 2), r0 + 3) if r <= 62]
    return min(cands, key=lambda r: _rice_expected_bits(k, p, r))


def estimate_bytes(n: int, k: int) -> dict[str, float]:
    """Estimated body bytes of each coder for k of n (uniform positions), from closed forms."""
    base = 1 + uvarint_size(k)
    p = k / n if n else 0.0
    r = rice_parameter(n, k)
    rice_bits = _rice_expected_bits(k, p, r) if 0 < k < n else 0.0
    unary = max(0.0, rice_bits - k * r) / 8
    return {
        "bitmap": base + (n + 7) // 8,
        "rice": base + 3 + uvarint_size(int(unary) + 1) + unary + math.ceil(k * r / 8) + 0.5,
        "ans": base + n * _h2(p) / 8 * 1.0005 + 6,
    }


def choose_method(n: int, k: int) -> str:
    est = estimate_bytes(n, k)
    return min(METHODS, key=lambda m: est[m])


def _sampled_gaps(pos: Positions) -> np.ndarray:
    """Gaps of about _RICE_SAMPLE kept entries, from _RICE_WINDOWS evenly spaced windows (all
    gaps when k is small): enough to see how clustered the mask is, at a fraction of O(n)."""
    if pos.k <= _RICE_SAMPLE:
        return np.diff(pos.indices, prepend=np.int64(-1)) - 1
    if not pos.has_mask:  # windows of consecutive kept indices
        per = _RICE_SAMPLE // _RICE_WINDOWS
        starts = np.linspace(0, pos.k - per, _RICE_WINDOWS).astype(np.int64)
        return np.concatenate([np.diff(pos.indices[a : a + per]) - 1 for a in starts])
    width = max(1, int(pos.n * _RICE_SAMPLE / (pos.k * _RICE_WINDOWS)))
    starts = np.linspace(0, pos.n - width, _RICE_WINDOWS).astype(np.int64)
    return np.concatenate([np.diff(np.flatnonzero(pos.mask[a : a + width]), prepend=-1) - 1
                           for a in starts])


def _choose_for(pos: Positions) -> tuple[str, _RicePlan | None]:
    """auto's choice for one mask: the closed-form estimates, except that when Rice's closed
    form is within _RICE_RECHECK of the best, Rice's size is estimated from a sample of the
    real gaps (clustered real masks code well below the uniform estimate), and only when that
    sample says Rice wins is the whole plan computed (exact sizes, still no encoding)."""
    est = estimate_bytes(pos.n, pos.k)
    best = min(METHODS, key=lambda m: est[m])
    if best == "rice" or est["rice"] > _RICE_RECHECK * est[best]:
        return best, None
    gaps = _sampled_gaps(pos)
    if gaps.size == 0:
        return best, None
    sample = _plan_rice(np.cumsum(gaps + 1) - 1, _RICE_LOG2_BLOCKS[:1])
    if sample.bits / gaps.size * pos.k / 8 >= est[best]:
        return best, None
    plan = _plan_rice(pos.indices)
    return ("rice", plan) if plan.body_bytes < est[best] else (best, None)


def max_positions_bytes(n: int) -> int:
    """Largest body any coder can legitimately produce for n entries (for oversize checks)."""
    # auto never exceeds bitmap by more than a few bytes; an explicit rice/ans at a bad
    # density can: rice <= k*(r+2)/8 with r <= log2 n, ans <= n*8/8 (bits cannot exceed
    # ~precision-limited worst case); keep a generous linear bound.
    return 32 + 2 * n + (n + 7) // 8


# --------------------------------------------------------------------------- coders
def _pack_bits_le(bits: np.ndarray) -> np.ndarray:
    return np.packbits(bits, bitorder="little")


# Block sizes (log2, in gaps) the Rice encoder tries; one more candidate is a single block.
# Real masks are clustered (a pruned input pixel empties a whole column of fc weights), so a
# parameter per block of 32 gaps follows the local density; uniform positions prefer few blocks.
_RICE_LOG2_BLOCKS = (5, 7)
_RICE_SINGLE_BLOCK = 63


def _rice_block_spans(k: int, log2_block: int) -> tuple[np.ndarray, np.ndarray]:
    """(start, length) of each block of 2**log2_block gaps; the last one may be shorter."""
    block = k if log2_block >= _RICE_SINGLE_BLOCK else min(k, 1 << log2_block)
    starts = np.arange(0, k, block, dtype=np.int64)
    return starts, np.diff(np.append(starts, k))


def _rice_block_parameters(gaps: np.ndarray, starts: np.ndarray,
                           lens: np.ndarray) -> tuple[np.ndarray, int]:
    """The best r per block among the three around the block mean's optimum, and the total
    bits of unary + remainder streams with those parameters (exact, no encoding)."""
    mean = np.add.reduceat(gaps, starts) / lens
    r0 = np.floor(np.log2(np.maximum(mean * math.log(2), 1.0))).astype(np.int64)
    best_bits = best_r = None
    for dr in (-1, 0, 1):
        r = np.clip(r0 + dr, 0, _MAX_RICE_R)
        bits = np.add.reduceat(gaps >> np.repeat(r, lens), starts) + lens * (r + 1)
        if best_bits is None:
            best_bits, best_r = bits, r
        else:
            better = bits < best_bits
            best_bits, best_r = np.where(better, bits, best_bits), np.where(better, r, best_r)
    return best_r, int(best_bits.sum())


def _pack_fixed_width(values: np.ndarray, width: int) -> np.ndarray:
    """LSB-first bits of each value, ``width`` bits each, as a flat 0/1 uint8 array."""
    if width == 0 or values.size == 0:
        return np.zeros(0, np.uint8)
    shifts = np.arange(width, dtype=np.uint64)
    return (((values.astype(np.uint64)[:, None] >> shifts) & np.uint64(1))
            .astype(np.uint8).reshape(-1))


def _unpack_fixed_width(bits: np.ndarray, width: int) -> np.ndarray:
    """Inverse of :func:`_pack_fixed_width` for ``bits.size // width`` values (int64)."""
    if width == 0:
        return np.zeros(0, np.int64)
    rows = bits.reshape(-1, width).astype(np.int64)
    return rows @ np.left_shift(np.int64(1), np.arange(width, dtype=np.int64))


@dataclass(frozen=True)
class _RicePlan:
    """Everything the Rice encoder decides before writing: sizes are exact."""

    gaps: np.ndarray
    log2_block: int
    lens: np.ndarray
    r_blocks: np.ndarray
    width: int
    bits: int  # unary + remainder + block-parameter bits

    @property
    def body_bytes(self) -> float:
        """Body size (method, k and lengths approximated): for auto's choice."""
        return (1 + uvarint_size(self.gaps.size) + 3 + uvarint_size(self.bits // 8) + 1
                + self.bits / 8)


def _plan_rice(idx: np.ndarray,
               log2_blocks: Sequence[int] = (*_RICE_LOG2_BLOCKS, _RICE_SINGLE_BLOCK)) -> _RicePlan:
    """The cheapest of the given block sizes (log2 gaps per block, ascending)."""
    gaps = np.diff(idx, prepend=np.int64(-1)) - 1
    k, best = gaps.size, None
    for log2_block in log2_blocks:
        starts, lens = _rice_block_spans(k, log2_block)
        r, bits = _rice_block_parameters(gaps, starts, lens)
        width = int(r.max() - r.min()).bit_length()
        plan = _RicePlan(gaps, log2_block, lens, r, width, bits + width * r.size)
        if best is None or plan.bits < best.bits:
            best = plan
        if starts.size == 1:
            break
    return best


def _encode_rice(plan: _RicePlan, out: bytearray) -> None:
    gaps, r_blocks, width = plan.gaps, plan.r_blocks, plan.width
    r_min = int(r_blocks.min())
    r = np.repeat(r_blocks, plan.lens)
    q = gaps >> r
    ends = np.cumsum(q + 1) - 1  # position of each terminating one
    ubits = np.zeros(int(ends[-1]) + 1, dtype=np.uint8)
    ubits[ends] = 1
    unary = _pack_bits_le(ubits)
    out += bytes((plan.log2_block, r_min, width))
    out += _pack_bits_le(_pack_fixed_width(r_blocks - r_min, width)).tobytes()
    write_uvarint(out, unary.size)
    out += unary.tobytes()
    rem = gaps & ((np.int64(1) << r) - 1)
    groups = [_pack_fixed_width(rem[r == v], int(v)) for v in np.unique(r) if v]
    if groups:
        out += _pack_bits_le(np.concatenate(groups)).tobytes()


def _decode_rice(r_: Reader, n: int, k: int, where: str) -> np.ndarray:
    log2_block = r_.u8(f"{where} rice block size")
    if log2_block > _RICE_SINGLE_BLOCK:
        raise CodecError(f"{where}: rice block size 2**{log2_block} invalid")
    r_min, width = r_.u8(f"{where} rice parameter"), r_.u8(f"{where} rice parameter width")
    r_max_valid = min(_MAX_RICE_R, n.bit_length())
    if r_min > r_max_valid or width > 6:
        raise CodecError(f"{where}: rice parameter {r_min} / width {width} invalid for n={n}")
    starts, lens = _rice_block_spans(k, log2_block)
    side = np.frombuffer(r_.take((starts.size * width + 7) // 8, f"{where} rice parameters"),
                         np.uint8)
    side_bits = np.unpackbits(side, bitorder="little")
    if side_bits[starts.size * width :].any():
        raise CodecError(f"{where}: rice parameter padding bits not zero")
    r_blocks = (_unpack_fixed_width(side_bits[: starts.size * width], width) if width
                else np.zeros(starts.size, np.int64))
    r_blocks = r_blocks + r_min
    if int(r_blocks.max()) > r_max_valid:
        raise CodecError(f"{where}: rice parameter {int(r_blocks.max())} too large for n={n}")
    ulen = r_.uvarint(f"{where} rice unary length", max_value=r_.remaining)
    unary = np.frombuffer(r_.take(ulen, f"{where} rice unary stream"), dtype=np.uint8)
    r = np.repeat(r_blocks, lens)
    rem_bits = int(r.sum())
    rlen = (rem_bits + 7) // 8
    if r_.remaining != rlen:
        raise CodecError(f"{where}: rice remainder stream is {r_.remaining} bytes, "
                         f"expected {rlen} for k={k}")
    rem_bytes = np.frombuffer(r_.take(rlen, f"{where} rice remainders"), dtype=np.uint8)
    if ulen and unary[-1] == 0:
        raise CodecError(f"{where}: rice unary stream has a trailing zero byte")
    codes = int(_POPCOUNT[unary].sum(dtype=np.int64))  # checked before any O(k) allocation
    if codes != k:
        raise CodecError(f"{where}: rice unary stream holds {codes} codes, k = {k}")
    ones = np.flatnonzero(np.unpackbits(unary, bitorder="little"))
    q = np.diff(ones, prepend=np.int64(-1)) - 1
    if bool(np.any(q > (n >> r))):
        raise CodecError(f"{where}: rice gap overruns n = {n}")
    rb = np.unpackbits(rem_bytes, bitorder="little")
    if rb[rem_bits:].any():
        raise CodecError(f"{where}: rice remainder padding bits not zero")
    rem = np.zeros(k, np.int64)
    offset = 0
    for v in np.unique(r):
        if v:
            sel = r == v
            count = int(np.count_nonzero(sel)) * int(v)
            rem[sel] = _unpack_fixed_width(rb[offset : offset + count], int(v))
            offset += count
    gaps = (q << r) | rem
    # each gap is < 2n here; a float sum cannot overflow, so the int64 cumsum below cannot wrap
    if float(np.sum(gaps, dtype=np.float64)) > n:
        raise CodecError(f"{where}: rice gaps overrun n = {n}")
    idx = np.cumsum(gaps + 1) - 1
    if idx[-1] >= n:
        raise CodecError(f"{where}: index {int(idx[-1])} out of range [0, {n})")
    return idx


def _ans_model(n: int, k: int):
    import constriction

    # Both sides must build bit-identical probabilities: only correctly rounded IEEE ops
    # (division, subtraction, repeated multiplication), no pow() whose last ulp is libm's.
    p = k / n
    q = 1.0 - p
    pp, qq = [1.0], [1.0]
    for _ in range(8):
        pp.append(pp[-1] * p)
        qq.append(qq[-1] * q)
    pop = _POPCOUNT.astype(np.int64)
    probs = np.array(pp)[pop] * np.array(qq)[8 - pop]
    return constriction.stream.model.Categorical(probs, perfect=False)


def _fatal(e: BaseException) -> bool:
    return isinstance(e, (KeyboardInterrupt, SystemExit, MemoryError))


def _encode_ans(mask_bytes: np.ndarray, n: int, k: int, out: bytearray) -> None:
    import constriction

    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(mask_bytes.astype(np.int32), _ans_model(n, k))
    out += coder.get_compressed().astype("<u4").tobytes()


_ANS_CHUNK = 1 << 20


def _decode_ans(data, n: int, k: int, where: str) -> np.ndarray:
    """Packed mask bytes; decoded in chunks with a running popcount, so corrupt streams stop
    early and the transient memory is O(chunk), plus the n/8-byte output."""
    import constriction

    if len(data) % 4:
        raise CodecError(f"{where}: ANS stream length {len(data)} is not a multiple of 4")
    nb = (n + 7) // 8
    # No "too short for n" test: an ANS stack coder emits nothing for the most probable
    # symbol while its state is still empty (a trailing run of 0x00 bytes is free), so the
    # work here is bounded by the receiver's n, not by the stream length.
    model = _ans_model(n, k)
    words = np.frombuffer(data, dtype="<u4").astype(np.uint32)
    out = np.empty(nb, dtype=np.uint8)
    ones = 0
    try:
        coder = constriction.stream.stack.AnsCoder(words)
        for start in range(0, nb, _ANS_CHUNK):
            m = min(_ANS_CHUNK, nb - start)
            chunk = np.asarray(coder.decode(model, m))
            if chunk.size != m or (m and int(chunk.max()) > 255):
                raise CodecError(f"{where}: ANS produced invalid symbols")
            out[start : start + m] = chunk
            ones += int(_POPCOUNT[out[start : start + m]].sum(dtype=np.int64))
            if ones > k:
                raise CodecError(f"{where}: ANS stream decodes to more than k = {k} ones")
        empty = coder.is_empty()
    except CodecError:
        raise
    except BaseException as e:  # constriction raises ValueError / pyo3 PanicException
        if _fatal(e):
            raise
        raise CodecError(f"{where}: invalid ANS stream ({type(e).__name__}: {e})") from None
    if not empty:
        raise CodecError(f"{where}: ANS stream not consumed exactly (corrupt or trailing data)")
    return out


def _check_bitmap(b: np.ndarray, n: int, k: int, where: str) -> np.ndarray:
    m = np.unpackbits(b, bitorder="little").view(bool)
    if n % 8 and m[n:].any():
        raise CodecError(f"{where}: bitmap padding bits not zero")
    m = m[:n]
    c = int(np.count_nonzero(m))
    if c != k:
        raise CodecError(f"{where}: bitmap holds {c} ones, k = {k}")
    return m


def encode_positions(mask_or_indices, n: int | None = None, method: str = "auto") -> bytes:
    """Body bytes for a mask / index set (see module docstring for the layout)."""
    pos = as_positions(mask_or_indices, n)
    n, k = pos.n, pos.k
    if n > _MAX_N:
        raise CodecError(f"positions: n = {n} too large")
    out = bytearray()
    if k == 0 or k == n:
        out.append(_M_TRIVIAL)
        write_uvarint(out, k)
        return bytes(out)
    rice_plan = None
    if method == "auto":
        method, rice_plan = _choose_for(pos)
    if method not in _METHOD_CODE:
        raise CodecError(f"positions: unknown method {method!r} (one of {METHODS} or 'auto')")
    out.append(_METHOD_CODE[method])
    write_uvarint(out, k)
    if method == "rice":
        _encode_rice(rice_plan or _plan_rice(pos.indices), out)
    else:
        b = _pack_bits_le(pos.mask)
        if method == "bitmap":
            out += b.tobytes()
        else:
            _encode_ans(b, n, k, out)
    return bytes(out)


def read_positions(r_: Reader, n: int, where: str = "positions") -> Positions:
    """Decode a positions body occupying the rest of ``r_`` (exactly)."""
    method = r_.u8(f"{where} method")
    k = r_.uvarint(f"{where} k", max_value=n)
    if method == _M_TRIVIAL:
        if k not in (0, n):
            raise CodecError(f"{where}: trivial method with k={k} (must be 0 or n={n})")
        r_.expect_end(f"{where} (trivial)")
        if k == 0:
            return Positions(n, indices=np.zeros(0, np.int64), k=0)
        return Positions(n, mask=np.ones(n, bool), k=n)
    if k == 0 or k == n:
        raise CodecError(f"{where}: method {method} with k={k} (must use trivial)")
    if method == _M_BITMAP:
        nb = (n + 7) // 8
        if r_.remaining != nb:
            raise CodecError(f"{where}: bitmap is {r_.remaining} bytes, expected {nb} for n={n}")
        b = np.frombuffer(r_.take(nb, f"{where} bitmap"), dtype=np.uint8)
        return Positions(n, mask=_check_bitmap(b, n, k, where), k=k)
    if method == _M_RICE:
        return Positions(n, indices=_decode_rice(r_, n, k, where), k=k)
    if method == _M_ANS:
        # the decode work is bounded by n, which the receiver's expectation bounds
        data = r_.take(r_.remaining, f"{where} ANS stream")
        b = _decode_ans(data, n, k, where)
        return Positions(n, mask=_check_bitmap(b, n, k, where), k=k)
    raise CodecError(f"{where}: unknown method code {method}")


def decode_positions(body, n: int, where: str = "positions") -> Positions:
    return read_positions(Reader(body, where), n, where)


def body_method(body) -> str:
    """Name of the coder that wrote a positions body ("trivial" for k == 0 or k == n)."""
    code = Reader(body).u8("method")
    names = {_M_TRIVIAL: "trivial", **{c: m for m, c in _METHOD_CODE.items()}}
    if code not in names:
        raise CodecError(f"positions: unknown method code {code}")
    return names[code]


def positions_data_bytes(body) -> int:
    """Bytes of coded data in a body (the rest is per-body header: method, k, Rice's block
    size, r_min, width and unary length)."""
    r_ = Reader(body)
    method = r_.u8("method")
    k = r_.uvarint("k")
    if method != _M_RICE:
        return r_.remaining
    log2_block, _, width = r_.u8("block size"), r_.u8("r_min"), r_.u8("width")
    side = (_rice_block_spans(k, log2_block)[0].size * width + 7) // 8
    r_.take(side, "block parameters")
    r_.uvarint("unary length")
    return r_.remaining + side  # the per-block parameters are coded data, not header


@register_codec
class PositionsCodec(Codec):
    """Masks for a list of tensors. ``encode(masks)`` (bool arrays, or any arrays: nonzero
    entries), or ``encode(indices, shapes=...)`` with flat index arrays; ``decode`` returns
    bool masks of the expected shapes."""

    name = "positions"
    version = 2  # 2: block-adaptive Rice positions
    lossy = False

    def encode(self, arrays: Sequence[np.ndarray], *, method: str = "auto",
               shapes: Sequence[tuple[int, ...]] | None = None) -> bytes:
        arrays = list(arrays)
        tensors, sections = [], []
        for i, a in enumerate(arrays):
            if shapes is not None:
                shape = tuple(int(d) for d in shapes[i])
                body = encode_positions(np.asarray(a), numel(shape), method)
            else:
                a = np.asarray(a)
                shape = a.shape
                body = encode_positions(a if a.dtype == bool else a != 0, None, method)
            tensors.append((shape, DTYPE_CODES["mask"]))
            sections.append(body)
        if shapes is not None and len(shapes) != len(arrays):
            raise CodecError(f"{len(shapes)} shapes for {len(arrays)} index arrays")
        return pack(self.codec_id, self.version, tensors, sections)

    def decode_positions(self, payload: bytes,
                         expected_shapes: Sequence[tuple[int, ...]]) -> list[Positions]:
        shapes = [tuple(int(d) for d in s) for s in expected_shapes]
        cap = max_header_bytes(shapes) + sum(max_positions_bytes(numel(s)) for s in shapes)
        f = unpack(
            payload,
            codec_id=self.codec_id,
            codec_versions=self.read_versions,
            expected_shapes=shapes,
            allowed_dtypes=[DTYPE_CODES["mask"]],
            n_sections=len(shapes),
            max_payload=cap,
        )
        if len(f.params):
            raise CodecError("params: positions takes none")
        return [read_positions(Reader(s, f"tensor {i} positions"), t.numel, f"tensor {i} positions")
                for i, (t, s) in enumerate(zip(f.tensors, f.sections))]

    def decode(self, payload: bytes,
               expected_shapes: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
        ps = self.decode_positions(payload, expected_shapes)
        return [p.mask.reshape(tuple(s)) for p, s in zip(ps, expected_shapes)]
