"""Property tests (hypothesis, derandomized): every stage round-trips over shapes, value
codings and densities from 0 (empty) to 1 (full), exactly where lossless and within the
stated error bound where lossy."""

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedsqueeze.codecs import decode_masked, decode_sparse_parts, encode_masked, get_codec
from fedsqueeze.codecs.entropy import decode_symbols, encode_symbols
from fedsqueeze.codecs.positions import decode_positions, encode_positions
from fedsqueeze.codecs.quant import quant_error_bound, quantize

SETTINGS = settings(derandomize=True, max_examples=60, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

shapes_st = st.lists(st.integers(0, 9), min_size=0, max_size=3).map(tuple)
density_st = st.one_of(st.just(0.0), st.just(1.0), st.floats(0.0, 1.0))


@st.composite
def tensors(draw, n_max=6):
    """A list of (float32 array, density-masked) tensors with a mix of shapes and scales."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    shapes = draw(st.lists(shapes_st, min_size=1, max_size=n_max))
    scale = draw(st.sampled_from([1e-6, 1e-2, 1.0, 1e3]))
    out = []
    for s in shapes:
        d = draw(density_st)
        x = (rng.standard_normal(s) * scale).astype(np.float32)
        out.append(np.where(rng.random(s) < d, x, 0).astype(np.float32))
    return out


@st.composite
def masks(draw):
    n = draw(st.integers(1, 3000))
    d = draw(density_st)
    structured = draw(st.booleans())
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if structured:  # runs of kept entries, like pruned rows/filters
        start = rng.integers(0, n, size=max(1, int(d * 10)))
        m = np.zeros(n, bool)
        for s0 in start:
            m[s0 : s0 + rng.integers(1, max(2, n // 10))] = True
        return m
    return rng.random(n) < d


@SETTINGS
@given(tensors(), st.sampled_from(["fp32", "fp16", "bf16"]))
def test_dense_round_trip(arrs, dtype):
    c = get_codec("dense")
    out = c.decode(c.encode(arrs, dtype), [a.shape for a in arrs])
    for a, b in zip(arrs, out):
        assert b.shape == a.shape and b.dtype == np.float32
        if dtype == "fp32":
            np.testing.assert_array_equal(a, b)
        else:
            rel = 2.0**-11 if dtype == "fp16" else 2.0**-8
            tiny = 2.0**-24 if dtype == "fp16" else 2.0**-133
            assert np.all(np.abs(a - b) <= np.abs(a) * rel + tiny)


@SETTINGS
@given(masks(), st.sampled_from(["bitmap", "rice", "ans", "auto"]))
def test_positions_round_trip(m, method):
    p = decode_positions(encode_positions(m, method=method), m.size)
    np.testing.assert_array_equal(p.mask, m)
    np.testing.assert_array_equal(p.indices, np.flatnonzero(m))


@SETTINGS
@given(tensors(), st.sampled_from(["fp32", "fp16", "q8", "q3", "ternary"]),
       st.sampled_from(["auto", "rice", "bitmap", "ans"]))
def test_sparse_round_trip(arrs, values, positions):
    c = get_codec("sparse")
    shapes = [a.shape for a in arrs]
    parts = decode_sparse_parts(c.encode(arrs, values=values, positions=positions, seed=0),
                                shapes)
    for a, p in zip(arrs, parts):
        np.testing.assert_array_equal(p.indices, np.flatnonzero(a))
        d = p.to_dense()
        assert d.shape == a.shape
        if values == "fp32":
            np.testing.assert_array_equal(d, a)
        elif values.startswith("q") and p.values.size:
            kept = a.reshape(-1)[p.indices]
            _, lo, scale = quantize(kept, int(values[1]))
            assert np.abs(p.values - kept).max() <= quant_error_bound(scale, lo, int(values[1]))


@SETTINGS
@given(tensors(), st.integers(1, 8), st.booleans(), st.integers(0, 2**31))
def test_quant_error_bound(arrs, bits, stochastic, seed):
    c = get_codec("quant")
    out = c.decode(c.encode(arrs, bits, stochastic=stochastic, seed=seed), [a.shape for a in arrs])
    for a, b in zip(arrs, out):
        if a.size:
            _, lo, scale = quantize(a, bits)
            assert np.abs(a - b).max() <= quant_error_bound(scale, lo, bits, stochastic)


@SETTINGS
@given(tensors(), st.booleans())
def test_ternary_three_levels(arrs, stochastic):
    c = get_codec("ternary")
    out = c.decode(c.encode(arrs, stochastic=stochastic, seed=5), [a.shape for a in arrs])
    for a, b in zip(arrs, out):
        assert len(np.unique(np.abs(b))) <= 2
        assert np.all((b == 0) | (np.sign(b) == np.sign(a)))


@SETTINGS
@given(tensors(), st.sampled_from(["fp32", "bf16", "q5"]), st.data())
def test_masked_round_trip(arrs, values, data):
    ms = [data.draw(st.one_of(st.none(), st.just(a != 0), st.just(np.ones(a.shape, bool))))
          for a in arrs]
    shapes = [a.shape for a in arrs]
    out = decode_masked(encode_masked(arrs, ms, values=values), shapes, ms)
    for a, m, b in zip(arrs, ms, out):
        keep = np.ones(a.shape, bool) if m is None else m
        assert np.all(b[~keep] == 0)
        if values == "fp32":
            np.testing.assert_array_equal(b[keep], a[keep])


@SETTINGS
@given(st.integers(2, 256), st.integers(0, 3000), st.floats(0.05, 1.0),
       st.sampled_from(["auto", "raw", "ans", "zstd"]), st.integers(0, 2**31))
def test_entropy_round_trip(alphabet, count, p, method, seed):
    rng = np.random.default_rng(seed)
    s = np.minimum(rng.geometric(p, count) - 1, alphabet - 1).astype(np.uint8)
    np.testing.assert_array_equal(
        decode_symbols(encode_symbols(s, alphabet, method), count, alphabet), s)


@SETTINGS
@given(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 40)), min_size=1, max_size=4),
       st.sampled_from(["fp32", "fp16", "q8"]))
def test_lowrank_round_trip(shapes, values):
    c = get_codec("lowrank")
    rng = np.random.default_rng(len(shapes))
    fs = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    out = c.decode(c.encode(fs, values), shapes)
    for f, o in zip(fs, out):
        assert o.shape == f.shape
        if values == "fp32":
            np.testing.assert_array_equal(f, o)
