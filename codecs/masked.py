"""``masked`` stage: values at the kept entries of masks both sides already hold; no positions.

For GWPF's frozen set, FedSparsify's and FedDST's global masks: the receiver passes the same
masks to ``decode``.  Values are in increasing flat-index (C) order of each mask; a mask of
``None`` means every entry (dense tensors such as biases travel in the same payload).

Frame: one tensor entry per tensor (shape, dtype code = value coding), params = the 8-byte
BLAKE2b digest of the masks (:func:`mask_digest`), one values section per tensor holding
exactly k values, k = the receiver's mask popcount.  A receiver whose masks differ from the
sender's gets ``CodecError("mask digest mismatch")`` instead of silently misplaced values.
"""

from __future__ import annotations

import hashlib
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
from .values import encode_values, max_values_bytes, read_values, spec_is_lossy

__all__ = ["MaskedCodec", "mask_digest", "encode_masked", "decode_masked", "decode_masked_values"]

_ALLOWED = [DTYPE_CODES[k] for k in ("fp32", "fp16", "bf16", "quant", "ternary")]
DIGEST_BYTES = 8


def _norm_masks(masks, shapes) -> list[np.ndarray | None]:
    if masks is None:
        return [None] * len(shapes)
    if len(masks) != len(shapes):
        raise CodecError(f"{len(masks)} masks for {len(shapes)} tensors")
    out = []
    for i, (m, s) in enumerate(zip(masks, shapes)):
        if m is None:
            out.append(None)
            continue
        m = np.asarray(m)
        if m.dtype != bool:
            raise CodecError(f"mask {i}: must be a bool array, got {m.dtype}")
        if m.size != numel(s):
            raise CodecError(f"mask {i}: {m.size} entries for shape {tuple(s)}")
        m = m.reshape(-1)
        out.append(None if m.all() else m)
    return out


def mask_digest(masks: Sequence[np.ndarray | None],
                shapes: Sequence[tuple[int, ...]] | None = None) -> bytes:
    """8-byte digest of a list of masks (None / all-True = full). Usable as a mask version."""
    if shapes is None:
        shapes = [np.asarray(m).shape for m in masks]
    h = hashlib.blake2b(digest_size=DIGEST_BYTES, person=b"fedsqz-mask")
    for s, m in zip(shapes, _norm_masks(masks, shapes)):
        head = bytearray()
        write_uvarint(head, numel(s))
        head.append(0 if m is None else 1)
        h.update(bytes(head))
        if m is not None:
            h.update(np.packbits(m, bitorder="little").tobytes())
    return h.digest()


def encode_masked(arrays: Sequence[np.ndarray], masks: Sequence[np.ndarray | None] | None, *,
                  values="fp16", stochastic: bool = False, seed=None,
                  allow_nonfinite: bool = False) -> bytes:
    arrays = [np.asarray(a) for a in arrays]
    shapes = [a.shape for a in arrays]
    ms = _norm_masks(masks, shapes)
    specs = [values] * len(arrays) if isinstance(values, str) else list(values)
    if len(specs) != len(arrays):
        raise CodecError(f"{len(specs)} value specs for {len(arrays)} tensors")
    rng = (seed if seed is None or isinstance(seed, np.random.Generator)
           else np.random.default_rng(seed))
    tensors, sections = [], []
    for i, (a, m, s) in enumerate(zip(arrays, ms, specs)):
        if a.dtype.kind not in "fiub":
            raise CodecError(f"tensor {i}: dtype {a.dtype} is not numeric")
        x = np.asarray(a, dtype=np.float32).reshape(-1)
        v = x if m is None else x[m]
        code, body = encode_values(v, s, stochastic=stochastic, seed=rng,
                                   allow_nonfinite=allow_nonfinite, what=f"tensor {i}")
        tensors.append((a.shape, code))
        sections.append(body)
    return pack(MaskedCodec.codec_id, MaskedCodec.version, tensors, sections,
                params=mask_digest(ms, shapes))


def decode_masked_values(payload, expected_shapes, masks, *,
                         allow_nonfinite: bool = False) -> list[np.ndarray]:
    """The kept values only (1-D float32 per tensor, mask order)."""
    shapes = [tuple(int(d) for d in s) for s in expected_shapes]
    ms = _norm_masks(masks, shapes)
    c = MaskedCodec
    cap = (max_header_bytes(shapes, params_max=DIGEST_BYTES)
           + sum(max_values_bytes(numel(s)) for s in shapes))
    f = unpack(payload, codec_id=c.codec_id, codec_versions=c.read_versions,
               expected_shapes=shapes, allowed_dtypes=_ALLOWED, n_sections=len(shapes),
               max_payload=cap)
    if len(f.params) != DIGEST_BYTES:
        raise CodecError(f"params: mask digest is {len(f.params)} bytes, expected {DIGEST_BYTES}")
    if bytes(f.params) != mask_digest(ms, shapes):
        raise CodecError("mask digest mismatch: the payload was encoded against different masks")
    out = []
    for i, (t, m, s) in enumerate(zip(f.tensors, ms, f.sections)):
        k = t.numel if m is None else int(np.count_nonzero(m))
        out.append(read_values(Reader(s, f"tensor {i} values"), t.dtype, k, f"tensor {i} values",
                               allow_nonfinite=allow_nonfinite))
    return out


def decode_masked(payload, expected_shapes, masks, *,
                  allow_nonfinite: bool = False) -> list[np.ndarray]:
    """Dense float32 tensors with zeros outside the masks."""
    shapes = [tuple(int(d) for d in s) for s in expected_shapes]
    vals = decode_masked_values(payload, shapes, masks, allow_nonfinite=allow_nonfinite)
    ms = _norm_masks(masks, shapes)
    out = []
    for s, m, v in zip(shapes, ms, vals):
        if m is None:
            out.append(v.reshape(s))
        else:
            d = np.zeros(numel(s), np.float32)
            d[m] = v
            out.append(d.reshape(s))
    return out


@register_codec
class MaskedCodec(Codec):
    """encode(arrays, masks, values="fp16"); decode(payload, expected_shapes, masks)."""

    name = "masked"
    version = 1
    lossy = True  # exact with values="fp32"

    def is_lossy(self, values="fp16", **_) -> bool:
        return any(spec_is_lossy(v) for v in ([values] if isinstance(values, str) else values))

    def encode(self, arrays, masks=None, **options) -> bytes:
        return encode_masked(arrays, masks, **options)

    def decode(self, payload, expected_shapes, masks=None, **options) -> list[np.ndarray]:
        return decode_masked(payload, expected_shapes, masks, **options)
