"""Position coders: exact round trips, sizes near log2 C(n,k), auto picks from an estimate."""

import numpy as np
import pytest

from fedsqueeze.codecs import CodecError, get_codec
from fedsqueeze.codecs import positions as P
from fedsqueeze.codecs.bounds import log2_binom
from fedsqueeze.codecs.framing import unpack

pc = get_codec("positions")
METHODS = ["bitmap", "rice", "ans", "auto"]


def _mask(n, k, seed=0):
    rng = np.random.default_rng(seed)
    m = np.zeros(n, bool)
    m[rng.choice(n, k, replace=False)] = True
    return m


def _data_and_header(payload, n):
    f = unpack(payload, codec_id=pc.codec_id, codec_versions=pc.read_versions,
               expected_shapes=[(n,)])
    data = P.positions_data_bytes(f.sections[0])
    return data, len(payload) - data


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("n,k", [(1, 0), (1, 1), (7, 3), (8, 8), (9, 1), (1000, 0), (1000, 1000),
                                 (1000, 1), (1000, 999), (4099, 2000)])
def test_round_trip_exact(method, n, k):
    m = _mask(n, k, seed=n + k)
    body = P.encode_positions(m, method=method)
    got = P.decode_positions(body, n)
    assert got.k == k
    np.testing.assert_array_equal(got.mask, m)
    np.testing.assert_array_equal(got.indices, np.flatnonzero(m))


def test_index_input_equals_mask_input():
    m = _mask(5000, 321)
    for method in METHODS:
        assert (P.encode_positions(np.flatnonzero(m), 5000, method)
                == P.encode_positions(m, method=method))


def test_index_input_validated():
    with pytest.raises(CodecError, match="strictly increasing"):
        P.encode_positions(np.array([3, 2]), 10)
    with pytest.raises(CodecError, match="out of range"):
        P.encode_positions(np.array([3, 10]), 10)
    with pytest.raises(CodecError, match="needs n"):
        P.encode_positions(np.array([1, 2]))
    with pytest.raises(CodecError, match="method"):
        P.encode_positions(np.array([1, 2]), 10, "gzip")


@pytest.mark.parametrize("density", [0.001, 0.01, 0.05, 0.1, 0.3, 0.5])
def test_auto_near_bound_with_small_header(density):
    n = 100_000
    k = int(n * density)
    m = _mask(n, k, seed=int(density * 1e4))
    payload = pc.encode([m])
    data, header = _data_and_header(payload, n)
    assert header <= 32
    assert data <= 1.05 * log2_binom(n, k) / 8 + 8
    np.testing.assert_array_equal(pc.decode(payload, [(n,)])[0], m)


@pytest.mark.parametrize("density", [0.001, 0.003, 0.01, 0.03, 0.05, 0.1])
def test_rice_within_three_percent(density):
    n = 100_000
    k = int(n * density)
    payload = pc.encode([_mask(n, k, seed=k)], method="rice")
    data, header = _data_and_header(payload, n)
    assert header <= 32
    assert data <= 1.03 * log2_binom(n, k) / 8 + 8


def test_rice_parameter_follows_density():
    rs = [P.rice_parameter(10**6, int(10**6 * d)) for d in (0.5, 0.1, 0.01, 0.001)]
    assert rs == sorted(rs) and rs[0] <= 1 and rs[-1] >= 8


def test_auto_chooses_from_estimate_without_encoding(monkeypatch):
    calls = []
    for name in ("_encode_rice", "_encode_ans"):
        orig = getattr(P, name)
        monkeypatch.setattr(P, name, lambda *a, _o=orig, _n=name: (calls.append(_n), _o(*a))[1])
    m = _mask(100_000, 10_000)
    P.encode_positions(m)
    assert calls == ["_encode_" + P.choose_method(100_000, 10_000)]
    assert P.choose_method(100_000, 50_000) == "bitmap"
    assert P.choose_method(10**6, 20) == "rice"


def test_estimates_track_actual_sizes():
    for d in (0.001, 0.05, 0.3):
        n, k = 200_000, int(200_000 * d)
        est = P.estimate_bytes(n, k)
        m = _mask(n, k)
        for method in ("bitmap", "rice", "ans"):
            actual = len(P.encode_positions(m, method=method))
            assert abs(actual - est[method]) <= 0.01 * actual + 8, (method, d, actual, est[method])


def test_codec_accepts_nonzero_arrays_and_indices():
    x = np.array([[0.0, 1.5, 0.0], [2.0, 0.0, 0.0]], np.float32)
    p = pc.encode([x])
    np.testing.assert_array_equal(pc.decode(p, [(2, 3)])[0], x != 0)
    p2 = pc.encode([np.array([1, 3])], shapes=[(2, 3)])
    assert p == p2


# ------------------------------------------------------------------ malformed bodies
def _body(method, k, rest=b""):
    from fedsqueeze.codecs.framing import write_uvarint

    b = bytearray([method])
    write_uvarint(b, k)
    return bytes(b) + rest


@pytest.mark.parametrize(
    "body,n,field",
    [
        (_body(0, 3), 10, "trivial"),
        (_body(0, 0) + b"\0", 10, "trailing"),
        (_body(1, 11), 10, "k"),
        (_body(1, 0), 10, "trivial"),
        (_body(1, 2, b"\x03"), 10, "bitmap is"),
        (_body(1, 2, b"\x03\x04"), 10, "padding"),
        (_body(1, 3, b"\x03\x00"), 10, "ones"),
        (_body(9, 2), 10, "unknown method"),
        # rice rest: log2 block (63 = one block), r_min, width, block deltas, U, unary, remainders
        (_body(2, 2, bytes([63, 1, 0, 1, 0b11])), 10, "remainder"),
        (_body(2, 2, bytes([63, 0, 0, 1, 0b1])), 10, "codes"),
        (_body(2, 2, bytes([63, 0, 0, 2, 0b11, 0])), 10, "trailing zero"),
        (_body(2, 2, bytes([63, 0, 0, 3, 0, 0, 0b11])), 10, "overrun"),
        (_body(2, 2, bytes([63, 60, 0, 1, 0b11])), 10, "rice parameter"),
        (_body(2, 2, bytes([63, 0, 7, 1, 0b11])), 10, "width"),
        (_body(2, 2, bytes([64, 0, 0, 1, 0b11])), 10, "block size"),
        (_body(2, 2, bytes([0, 0, 1, 0b100, 1, 0b11])), 10, "parameter padding"),
        (_body(2, 2, bytes([0, 3, 2, 0b1111, 1, 0b11])), 10, "too large"),
        (_body(2, 2, bytes([63, 2, 0, 1, 0b11, 0xF0])), 10, "padding"),
        (_body(2, 2, bytes([63, 2, 0, 1, 0b11, 0x0F])), 7, "out of range"),
        (_body(3, 2, b"\x01\x02\x03\x04\x05"), 10, "multiple of 4"),
        (_body(3, 2, b""), 10, "ANS|ones"),
        (_body(3, 5, b"\x00\x00\x00\x00"), 100, "ANS"),
        (_body(3, 5, b"\x12\x34\x56\x78" * 3), 100, "ANS"),
        (b"", 10, "truncated"),
    ],
)
def test_rejects_malformed_bodies(body, n, field):
    with pytest.raises(CodecError, match=field):
        P.decode_positions(body, n)


def test_ans_stream_must_be_consumed_exactly():
    m = _mask(1000, 100)
    body = P.encode_positions(m, method="ans")
    with pytest.raises(CodecError):
        P.decode_positions(body + b"\x01\x00\x00\x00", 1000)
    with pytest.raises(CodecError):
        P.decode_positions(body[:-4], 1000)


def test_frame_rejects_wrong_expectation():
    p = pc.encode([_mask(100, 10)])
    with pytest.raises(CodecError, match="dim 0"):
        pc.decode(p, [(101,)])
    with pytest.raises(CodecError, match="oversized"):
        pc.decode(p + b"\0" * 1000, [(100,)])


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("layout", ["front", "back", "strided"])
@pytest.mark.parametrize("k", [1, 10, 500, 999])
def test_structured_masks_round_trip(method, layout, k):
    # an ANS stack coder emits nothing for a trailing run of its most probable symbol, so
    # "front" masks code below n*H(k/n): decoders must not assume a minimum stream length
    n = 1000
    m = np.zeros(n, bool)
    if layout == "front":
        m[:k] = True
    elif layout == "back":
        m[n - k :] = True
    else:
        m[np.linspace(0, n - 1, k).astype(int)] = True
    np.testing.assert_array_equal(P.decode_positions(P.encode_positions(m, method=method), n).mask,
                                  m)


def _clustered_mask(density, seed=0):
    """Magnitude mask of a 128x784 fc layer whose input pixels carry unequal signal (border
    pixels near zero), so kept positions cluster by column as in a real pruned first layer."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:28, 0:28]
    pixel_scale = np.exp(-((yy - 13.5) ** 2 + (xx - 13.5) ** 2) / 120.0).reshape(-1)
    w = np.abs(rng.standard_normal((128, 784)) * (0.05 + pixel_scale)).reshape(-1)
    k = int(round(density * w.size))
    m = np.zeros(w.size, bool)
    m[np.argpartition(w, w.size - k)[w.size - k :]] = True
    return m


@pytest.mark.parametrize("density", [0.001, 0.01, 0.05, 0.1])
def test_rice_within_three_percent_on_clustered_masks(density):
    m = _clustered_mask(density)
    n, k = m.size, int(m.sum())
    payload = pc.encode([m], method="rice")
    data, header = _data_and_header(payload, n)
    assert header <= 32
    assert data <= 1.03 * log2_binom(n, k) / 8 + 8
    np.testing.assert_array_equal(pc.decode(payload, [(n,)])[0], m)


def test_rice_block_parameters_follow_local_density():
    # dense first half, sparse second half: one r per block codes both halves near their own optimum
    rng = np.random.default_rng(3)
    n = 200_000
    m = np.zeros(n, bool)
    m[rng.choice(n // 2, n // 20, replace=False)] = True
    m[n // 2 + rng.choice(n // 2, n // 2000, replace=False)] = True
    k = int(m.sum())
    body = P.encode_positions(m, method="rice")
    halves = log2_binom(n // 2, n // 20) + log2_binom(n // 2, n // 2000)
    assert len(body) <= 1.03 * halves / 8 + 16 < log2_binom(n, k) / 8
    np.testing.assert_array_equal(P.decode_positions(body, n).mask, m)


def test_auto_takes_rice_when_a_clustered_mask_codes_below_the_estimates():
    m = _clustered_mask(0.1)
    n, k = m.size, int(m.sum())
    assert P.choose_method(n, k) != "rice"  # the closed forms alone would not
    auto = P.encode_positions(m)
    assert auto[0] == 2  # rice's method code
    assert len(auto) < min(len(P.encode_positions(m, method=x)) for x in ("bitmap", "ans"))
