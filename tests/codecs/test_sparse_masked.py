"""Sparse (positions + values) and masked (values under a shared mask) payloads."""

import numpy as np
import pytest

from fedsqueeze.codecs import (
    CodecError,
    decode_any,
    decode_masked_values,
    decode_sparse_parts,
    encode_masked,
    encode_sparse,
    encode_sparse_parts,
    get_codec,
    mask_digest,
)
from fedsqueeze.codecs.framing import pack

sparse, masked = get_codec("sparse"), get_codec("masked")
rng = np.random.default_rng(0)


def sparse_arrays(density=0.1):
    out = []
    for shape in [(40, 30), (17,), (3, 3, 8, 8), ()]:
        x = rng.standard_normal(shape).astype(np.float32)
        out.append(np.where(rng.random(shape) < density, x, 0).astype(np.float32))
    return out


def test_fp32_values_exact_and_fp16_rounded():
    a = sparse_arrays()
    shapes = [x.shape for x in a]
    for x, y in zip(a, sparse.decode(sparse.encode(a, values="fp32"), shapes)):
        np.testing.assert_array_equal(x, y)
        assert y.dtype == np.float32
    for x, y in zip(a, sparse.decode(sparse.encode(a), shapes)):  # default fp16
        np.testing.assert_array_equal(y, x.astype(np.float16).astype(np.float32))
    assert sparse.is_lossy(values="fp16") and not sparse.is_lossy(values="fp32")


@pytest.mark.parametrize("positions", ["bitmap", "rice", "ans", "auto"])
@pytest.mark.parametrize("values", ["fp32", "bf16", "q8", "q2", "ternary"])
def test_every_position_coder_with_every_value_coding(positions, values):
    a = sparse_arrays(0.2)
    shapes = [x.shape for x in a]
    parts = decode_sparse_parts(encode_sparse(a, values=values, positions=positions, seed=1),
                                shapes)
    for x, p in zip(a, parts):
        np.testing.assert_array_equal(p.indices, np.flatnonzero(x))  # positions are always exact
        np.testing.assert_array_equal(p.mask, x != 0)
        assert p.to_dense().shape == x.shape


def test_explicit_masks_keep_zeros_and_indices_input():
    x = np.array([0.0, 1.0, 0.0, 2.0, 3.0], np.float32)
    m = np.array([True, True, False, True, False])
    out = sparse.decode(sparse.encode([x], [m], values="fp32"), [(5,)])[0]
    np.testing.assert_array_equal(out, [0, 1, 0, 2, 0])
    p1 = encode_sparse([x], [m], values="fp32")
    p2 = encode_sparse([x], [np.array([0, 1, 3])], values="fp32")
    p3 = encode_sparse_parts([(5,)], [np.array([0, 1, 3])], [np.array([0.0, 1.0, 2.0])],
                             values="fp32")
    assert p1 == p2 == p3
    with pytest.raises(CodecError, match="values for"):
        encode_sparse_parts([(5,)], [np.array([0, 1])], [np.array([1.0])])


def test_empty_and_full_tensors():
    a = [np.zeros((10, 10), np.float32), np.ones(7, np.float32), np.zeros((0, 4), np.float32)]
    shapes = [x.shape for x in a]
    p = sparse.encode(a, values="fp32")
    for x, y in zip(a, sparse.decode(p, shapes)):
        np.testing.assert_array_equal(x, y)
    assert len(p) < 64  # nothing dense on the wire for the zero tensor


def test_sparse_rejects_value_count_mismatch():
    good = sparse.encode([np.array([0, 1.0, 2.0, 0], np.float32)], values="fp32")
    with pytest.raises(CodecError, match="truncated"):
        sparse.decode(good[:-4] + b"\0" * 0, [(4,)])
    # positions claim 2 entries, values section holds 3 fp32
    from fedsqueeze.codecs.positions import encode_positions

    bad = pack(sparse.codec_id, sparse.version, [((4,), 0)],
               [encode_positions(np.array([1, 2]), 4, "bitmap"), b"\0" * 12])
    with pytest.raises(CodecError, match="values"):
        sparse.decode(bad, [(4,)])


def test_masked_round_trip_and_digest():
    a = [rng.standard_normal((20, 10)).astype(np.float32),
         rng.standard_normal(5).astype(np.float32)]
    ms = [rng.random((20, 10)) < 0.3, None]
    shapes = [x.shape for x in a]
    p = masked.encode(a, ms, values="fp32")
    out = masked.decode(p, shapes, ms)
    np.testing.assert_array_equal(out[0], np.where(ms[0], a[0], 0))
    np.testing.assert_array_equal(out[1], a[1])
    vals = decode_masked_values(p, shapes, ms)
    np.testing.assert_array_equal(vals[0], a[0][ms[0]])
    # no positions on the wire: 4 bytes per kept value + a small header
    assert len(p) - 4 * (int(ms[0].sum()) + 5) <= 32
    other = [ms[0].copy(), None]
    other[0][0, 0] = not other[0][0, 0]
    with pytest.raises(CodecError, match="digest"):
        masked.decode(p, shapes, other)
    # None and an all-True mask are the same mask
    assert mask_digest([None], [(5,)]) == mask_digest([np.ones(5, bool)], [(5,)])
    assert mask_digest([ms[0]]) != mask_digest([~ms[0]])


def test_masked_quantized_values():
    a = [rng.standard_normal(1000).astype(np.float32)]
    m = [rng.random(1000) < 0.5]
    out = decode_any(encode_masked(a, m, values="q4"), [(1000,)], masks=m)[0]
    assert np.all(out[~m[0]] == 0)
    assert (np.abs(out[m[0]] - a[0][m[0]]).max()
            <= (a[0][m[0]].max() - a[0][m[0]].min()) / 15 / 2 + 1e-5)


def test_masked_mask_validation():
    with pytest.raises(CodecError, match="bool"):
        encode_masked([np.ones(3)], [np.array([1, 0, 1])])
    with pytest.raises(CodecError, match="entries"):
        encode_masked([np.ones(3)], [np.ones(4, bool)])
    p = encode_masked([np.ones(3)], [np.array([True, False, True])])
    with pytest.raises(CodecError, match="masks for"):
        masked.decode(p, [(3,)], [])


def test_decode_any_dispatches_on_codec_id():
    a = sparse_arrays()
    shapes = [x.shape for x in a]
    for name, kw in [("dense", {}), ("sparse", {}), ("quant", {"bits": 8}), ("ternary", {})]:
        out = decode_any(get_codec(name).encode(a, **kw), shapes)
        assert [o.shape for o in out] == shapes
