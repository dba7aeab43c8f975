"""Information-theoretic bounds and the payload/bound helper."""

import math

import numpy as np
import pytest

from fedsqueeze.codecs import CodecError, encode_masked, get_codec
from fedsqueeze.codecs.bounds import entropy_bits, log2_binom, payload_bound, raw_bits


@pytest.mark.parametrize("n,k", [(1, 0), (10, 3), (64, 32), (1000, 1), (1000, 999), (5000, 1234)])
def test_log2_binom_matches_exact(n, k):
    assert log2_binom(n, k) == pytest.approx(math.log2(math.comb(n, k)), abs=1e-6, rel=1e-9)


def test_log2_binom_large_and_invalid():
    assert log2_binom(10**9, 10**6) > 0
    with pytest.raises(ValueError):
        log2_binom(5, 6)


def test_entropy_bits():
    assert entropy_bits(np.array([0, 1, 0, 1])) == pytest.approx(4.0)
    assert entropy_bits(np.zeros(10, np.uint8)) == 0.0
    assert entropy_bits(np.array([], np.uint8)) == 0.0
    assert raw_bits(10) == 320 and raw_bits(10, "fp16") == 160


def test_payload_bound_for_each_codec():
    rng = np.random.default_rng(0)
    x = np.where(rng.random(100_000) < 0.05, rng.standard_normal(100_000), 0).astype(np.float32)
    k = int(np.count_nonzero(x))
    n_bytes, bound, ratio = payload_bound(get_codec("dense").encode([x]), [x.shape])
    assert bound == 4 * x.size and 1.0 < ratio < 1.001
    n_bytes, bound, ratio = payload_bound(get_codec("positions").encode([x]), [x.shape])
    assert bound == pytest.approx(log2_binom(x.size, k) / 8) and ratio < 1.01
    n_bytes, bound, ratio = payload_bound(get_codec("sparse").encode([x], values="fp32"), [x.shape])
    assert bound == pytest.approx(log2_binom(x.size, k) / 8 + 4 * k) and ratio < 1.01
    n_bytes, bound, ratio = payload_bound(get_codec("quant").encode([x], 8), [x.shape])
    assert 1.0 <= ratio < 1.1
    m = [x != 0]
    n_bytes, bound, ratio = payload_bound(encode_masked([x], m, values="fp16"), [x.shape], masks=m)
    assert bound == 2 * k and ratio < 1.01


def test_payload_bound_empty():
    assert (payload_bound(get_codec("positions").encode([np.zeros(10, bool)]), [(10,)])[2]
            == float("inf"))


def test_the_bound_seen_on_the_way_is_the_receivers_bound():
    """A meter holds neither shapes nor masks: it reads shapes from the header and, for
    fixed-width masked values, k from the section; where k needs the mask it says None."""
    from fedsqueeze.codecs import ResidualHeader, get_codec_by_id, observed_bound_bits
    from fedsqueeze.codecs.framing import CODEC_IDS

    rng = np.random.default_rng(1)
    x = np.where(rng.random(50_000) < 0.1, rng.standard_normal(50_000), 0).astype(np.float32)
    b = np.ones(7, np.float32)
    m = [x != 0, None]
    both = [x.shape, b.shape]
    for payload, shapes, masks in (
            (get_codec("dense").encode([x, b]), both, None),
            (get_codec("dense").encode([x], "fp16"), [x.shape], None),
            (get_codec("sparse").encode([x], values="fp32"), [x.shape], None),
            (get_codec("positions").encode([x]), [x.shape], None),
            (get_codec("quant").encode([x, b], 4), both, None),
            (encode_masked([x, b], m, values="fp16"), both, m),
            (encode_masked([x, b], m, values="fp32"), both, m)):
        _, bound, _ = payload_bound(payload, shapes, masks=masks)
        assert observed_bound_bits(payload, x.size + 7) / 8 == pytest.approx(bound)
    assert observed_bound_bits(encode_masked([x], m[:1], values="q4"), x.size) is None
    with pytest.raises(CodecError, match="max_elements"):  # a header may not declare more
        observed_bound_bits(get_codec("dense").encode([x]), x.size - 1)

    codec = get_codec_by_id(CODEC_IDS["residual"])
    header = ResidualHeader(True, False, "median", 3, bytes(8), [bytes(8), bytes(8)])
    idx = np.flatnonzero(x)
    payload = codec.encode_residual(x.size, idx, x[idx], header, qe=1)
    decoded = codec.decode(payload, [x.shape])
    assert observed_bound_bits(payload, x.size) / 8 == pytest.approx(
        decoded.bound() - decoded.header_bytes)
    assert observed_bound_bits(payload, x.size) / 8 < len(payload)
