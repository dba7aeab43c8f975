"""``sparse`` stage: positions (positions.py) + the kept values (values.py), per tensor.

Frame: one tensor entry per tensor (shape, dtype code = value coding), two sections per
tensor: the positions body, then the values body for exactly k values (k from positions).
Values are in increasing flat-index (C) order.  Default positions = the nonzero entries.

Public API::

    encode_sparse(arrays, masks=None, *, values="fp16", positions="auto", stochastic=False,
                  seed=None) -> bytes
    encode_sparse_parts(shapes, positions, kept_values, *, values=...,
                        positions_method=...) -> bytes
    decode_sparse(payload, expected_shapes) -> list[np.ndarray]          # dense float32
    decode_sparse_parts(payload, expected_shapes) -> list[SparseTensor]   # positions + kept values
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .framing import DTYPE_CODES, CodecError, Reader, max_header_bytes, numel, pack, unpack
from .positions import (
    Positions,
    as_positions,
    encode_positions,
    max_positions_bytes,
    read_positions,
)
from .registry import Codec, register_codec
from .values import encode_values, max_values_bytes, read_values, spec_is_lossy

__all__ = ["SparseCodec", "SparseTensor", "encode_sparse", "encode_sparse_parts", "decode_sparse",
           "decode_sparse_parts"]

_ALLOWED = [DTYPE_CODES[k] for k in ("fp32", "fp16", "bf16", "quant", "ternary")]


@dataclass
class SparseTensor:
    shape: tuple[int, ...]
    positions: Positions
    values: np.ndarray  # float32, length k, in increasing flat-index order

    @property
    def indices(self) -> np.ndarray:
        return self.positions.indices

    @property
    def mask(self) -> np.ndarray:
        return self.positions.mask.reshape(self.shape)

    def to_dense(self) -> np.ndarray:
        out = np.zeros(numel(self.shape), dtype=np.float32)
        if self.positions.k == self.positions.n:
            out[:] = self.values
        elif self.positions.has_mask:
            out[self.positions.mask] = self.values
        else:
            out[self.positions.indices] = self.values
        return out.reshape(self.shape)


def _specs(spec, n):
    s = [spec] * n if isinstance(spec, str) else list(spec)
    if len(s) != n:
        raise CodecError(f"{len(s)} value specs for {n} tensors")
    return s


def encode_sparse_parts(shapes: Sequence[tuple[int, ...]], positions: Sequence,
                        kept_values: Sequence[np.ndarray], *,
                        values: str | Sequence[str] = "fp16", positions_method: str = "auto",
                        stochastic: bool = False, seed=None, allow_nonfinite: bool = False,
                        codec_id: int | None = None, version: int | None = None) -> bytes:
    """COO-style input: per tensor its shape, kept positions (bool mask or increasing flat
    indices) and the kept values (length k, same order)."""
    if not len(shapes) == len(positions) == len(kept_values):
        raise CodecError("shapes, positions and kept_values differ in length")
    specs = _specs(values, len(shapes))
    rng = (seed if seed is None or isinstance(seed, np.random.Generator)
           else np.random.default_rng(seed))
    tensors, sections = [], []
    for i, (shape, p, v, s) in enumerate(zip(shapes, positions, kept_values, specs)):
        shape = tuple(int(d) for d in shape)
        pos = as_positions(p, numel(shape))
        v = np.asarray(v, dtype=np.float32).reshape(-1)
        if v.size != pos.k:
            raise CodecError(f"tensor {i}: {v.size} values for {pos.k} positions")
        code, vbody = encode_values(v, s, stochastic=stochastic, seed=rng,
                                    allow_nonfinite=allow_nonfinite, what=f"tensor {i}")
        tensors.append((shape, code))
        sections += [encode_positions(pos, None, positions_method), vbody]
    return pack(codec_id or SparseCodec.codec_id, version or SparseCodec.version, tensors, sections)


def encode_sparse(arrays: Sequence[np.ndarray], masks: Sequence | None = None, *,
                  values: str | Sequence[str] = "fp16", positions: str = "auto",
                  stochastic: bool = False, seed=None, allow_nonfinite: bool = False) -> bytes:
    """Dense input. ``masks``: per tensor a bool mask / flat indices of the entries to send
    (None: the nonzero entries)."""
    arrays = [np.asarray(a) for a in arrays]
    if masks is not None and len(masks) != len(arrays):
        raise CodecError(f"{len(masks)} masks for {len(arrays)} tensors")
    shapes, poss, kept = [], [], []
    for i, a in enumerate(arrays):
        if a.dtype.kind not in "fiub":
            raise CodecError(f"tensor {i}: dtype {a.dtype} is not numeric")
        x = np.asarray(a, dtype=np.float32).reshape(-1)
        m = masks[i] if masks is not None else None
        if m is None:
            pos = Positions(x.size, mask=x != 0)
        else:
            pos = as_positions(np.asarray(m).reshape(-1) if np.asarray(m).dtype == bool else m,
                               x.size)
        if pos.k == x.size:
            v = x
        elif pos.has_mask:
            v = x[pos.mask]
        else:
            v = x[pos.indices]
        shapes.append(a.shape)
        poss.append(pos)
        kept.append(v)
    return encode_sparse_parts(shapes, poss, kept, values=values, positions_method=positions,
                               stochastic=stochastic, seed=seed, allow_nonfinite=allow_nonfinite)


def decode_sparse_parts(payload, expected_shapes: Sequence[tuple[int, ...]], *,
                        allow_nonfinite: bool = False) -> list[SparseTensor]:
    shapes = [tuple(int(d) for d in s) for s in expected_shapes]
    cap = max_header_bytes(shapes, sections_per_tensor=2) + sum(
        max_positions_bytes(numel(s)) + max_values_bytes(numel(s)) for s in shapes)
    c = SparseCodec
    f = unpack(payload, codec_id=c.codec_id, codec_versions=c.read_versions,
               expected_shapes=shapes, allowed_dtypes=_ALLOWED, n_sections=2 * len(shapes),
               max_payload=cap)
    if len(f.params):
        raise CodecError("params: sparse takes none")
    out = []
    for i, t in enumerate(f.tensors):
        where = f"tensor {i}"
        pos = read_positions(Reader(f.sections[2 * i], f"{where} positions"), t.numel,
                             f"{where} positions")
        vals = read_values(Reader(f.sections[2 * i + 1], f"{where} values"), t.dtype, pos.k,
                           f"{where} values", allow_nonfinite=allow_nonfinite)
        out.append(SparseTensor(t.shape, pos, vals))
    return out


def decode_sparse(payload, expected_shapes: Sequence[tuple[int, ...]], *,
                  allow_nonfinite: bool = False) -> list[np.ndarray]:
    return [st.to_dense() for st in decode_sparse_parts(payload, expected_shapes,
                                                        allow_nonfinite=allow_nonfinite)]


@register_codec
class SparseCodec(Codec):
    """Positions + values per tensor. encode(arrays, masks=None, values="fp16",
    positions="auto")."""

    name = "sparse"
    version = 2  # 2: block-adaptive Rice positions
    lossy = True  # exact with values="fp32"

    def is_lossy(self, values="fp16", **_) -> bool:
        return any(spec_is_lossy(v) for v in ([values] if isinstance(values, str) else values))

    def encode(self, arrays, masks=None, **options) -> bytes:
        return encode_sparse(arrays, masks, **options)

    def decode(self, payload, expected_shapes, **options) -> list[np.ndarray]:
        return decode_sparse(payload, expected_shapes, **options)
