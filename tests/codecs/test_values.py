"""Quantization, ternary, entropy coding of symbols, low-rank factors."""

import struct

import numpy as np
import pytest

from fedsqueeze.codecs import CodecError, get_codec
from fedsqueeze.codecs.bounds import entropy_bits
from fedsqueeze.codecs.entropy import decode_symbols, encode_symbols
from fedsqueeze.codecs.framing import pack
from fedsqueeze.codecs.quant import quant_error_bound, quantize
from fedsqueeze.codecs.values import VALUE_SPECS, parse_spec

quant, tern, ent, lowrank = (get_codec(n) for n in ("quant", "ternary", "entropy", "lowrank"))
rng = np.random.default_rng(0)
X = [rng.standard_normal((30, 20)).astype(np.float32),
     (rng.standard_normal(257) * 1e-3).astype(np.float32)]
SH = [x.shape for x in X]


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("stochastic", [False, True])
def test_quant_error_within_bound(bits, stochastic):
    out = quant.decode(quant.encode(X, bits, stochastic=stochastic, seed=3), SH)
    for x, y in zip(X, out):
        _, lo, scale = quantize(x, bits)
        assert np.abs(x - y).max() <= quant_error_bound(scale, lo, bits, stochastic)
        assert len(np.unique(y)) <= 2**bits


def test_quant_flags():
    assert quant.lossy and quant.stype == "fedsqueeze/quant@1"


def test_stochastic_rounding_is_seeded_and_unbiased():
    x = np.full(200_000, 0.3, np.float32)
    x[0], x[1] = 0.0, 1.0  # range [0, 1], 1 bit: 0.3 rounds up with probability 0.3
    a = quant.encode([x], 1, stochastic=True, seed=7)
    assert a == quant.encode([x], 1, stochastic=True, seed=7)
    assert a != quant.encode([x], 1, stochastic=True, seed=8)
    y = quant.decode(a, [x.shape])[0]
    assert abs(float(y[2:].mean()) - 0.3) < 0.005
    with pytest.raises(CodecError, match="seed"):
        quant.encode([x], 1, stochastic=True)


def test_quant_constant_and_empty_tensors():
    c = np.full((4, 4), 2.5, np.float32)
    e = np.zeros((0, 3), np.float32)
    out = quant.decode(quant.encode([c, e], 4), [(4, 4), (0, 3)])
    np.testing.assert_array_equal(out[0], c)
    assert out[1].shape == (0, 3)


def test_quant_entropy_coding_beats_raw_on_peaked_data():
    x = rng.standard_normal(50_000).astype(np.float32)
    p = quant.encode([x], 8)
    sym, _, _ = quantize(x, 8)
    assert len(p) < 50_000 * 0.9  # raw would be 50 kB
    assert len(p) <= entropy_bits(sym) / 8 * 1.02 + 600  # + frequency table


@pytest.mark.parametrize("bad,field", [(0, "bits"), (9, "bits"), (2.5, "bits")])
def test_quant_bad_bits(bad, field):
    with pytest.raises(CodecError, match=field):
        quant.encode(X, bad)


def _quant_payload(bits=4, lo=0.0, scale=1.0, flags=0):
    body = (bytes([bits, flags]) + struct.pack("<ff", lo, scale)
            + encode_symbols(np.zeros(3, np.uint8), 1 << max(1, min(bits, 8))))
    return pack(quant.codec_id, 1, [((3,), 3)], [body])


@pytest.mark.parametrize(
    "payload,field",
    [
        (_quant_payload(scale=float("nan")), "scale"),
        (_quant_payload(scale=float("inf")), "scale"),
        (_quant_payload(scale=-1.0), "scale"),
        (_quant_payload(lo=float("inf")), "lo"),
        (_quant_payload(lo=3e38, scale=3e38), "overflow"),
        (_quant_payload(bits=0), "bits"),
        (_quant_payload(bits=9), "bits"),
        (_quant_payload(flags=7), "flags"),
    ],
)
def test_quant_rejects_bad_params(payload, field):
    with pytest.raises(CodecError, match=field):
        quant.decode(payload, [(3,)])


def test_ternary_values_and_scale():
    out = tern.decode(tern.encode(X), SH)
    for x, y in zip(X, out):
        vals = np.unique(np.abs(y))
        assert len(vals) <= 2 and vals[0] == 0
        s = vals[-1]
        keep = np.abs(x) > 0.7 * np.abs(x).mean()
        assert np.isclose(s, np.abs(x[keep]).mean(), rtol=1e-5)
        np.testing.assert_array_equal(np.sign(y[keep]), np.sign(x[keep]))


def test_ternary_stochastic_unbiased():
    x = (np.random.default_rng(11).standard_normal(100_000) * 0.1).astype(np.float32)
    y = tern.decode(tern.encode([x], stochastic=True, seed=1), [x.shape])[0]
    assert abs(float((y - x).mean())) < 3 * float(np.abs(x).max()) / np.sqrt(x.size)
    assert tern.lossy


def test_ternary_rejects_negative_scale():
    body = bytes([0]) + struct.pack("<f", -1.0) + encode_symbols(np.zeros(2, np.uint8), 3)
    with pytest.raises(CodecError, match="scale"):
        tern.decode(pack(tern.codec_id, 1, [((2,), 4)], [body]), [(2,)])


@pytest.mark.parametrize("method", ["raw", "ans", "zstd", "auto"])
@pytest.mark.parametrize("alphabet", [2, 3, 16, 256])
def test_entropy_round_trip(method, alphabet):
    s = np.minimum(rng.geometric(0.3, 3001) - 1, alphabet - 1).astype(np.uint8)
    body = encode_symbols(s, alphabet, method)
    np.testing.assert_array_equal(decode_symbols(body, s.size, alphabet), s)
    t = [s[:3000].reshape(3, 1000), s[3000:]]
    out = ent.decode(ent.encode(t, alphabet=alphabet, method=method), [(3, 1000), (1,)],
                     alphabet=alphabet)
    for a, b in zip(t, out):
        np.testing.assert_array_equal(a, b)


def test_entropy_auto_picks_smallest():
    s = np.tile(np.arange(16, dtype=np.uint8), 1000)  # periodic: zstd wins
    sizes = {m: len(encode_symbols(s, 16, m)) for m in ("raw", "ans", "zstd")}
    assert len(encode_symbols(s, 16)) == min(sizes.values()) and min(sizes, key=sizes.get) == "zstd"
    s = np.minimum(rng.geometric(0.5, 20000) - 1, 15).astype(np.uint8)  # i.i.d. peaked: ans wins
    sizes = {m: len(encode_symbols(s, 16, m)) for m in ("raw", "ans", "zstd")}
    assert len(encode_symbols(s, 16)) == min(sizes.values()) and min(sizes, key=sizes.get) == "ans"


def test_entropy_rejects_bad_streams():
    s = rng.integers(0, 4, 500).astype(np.uint8)
    import zstandard

    z = zstandard.ZstdCompressor(write_content_size=True).compress(s.tobytes())
    with pytest.raises(CodecError, match="content size"):
        decode_symbols(bytes([2, 4]) + z, 500)
    z = zstandard.ZstdCompressor(write_content_size=False).compress(s.tobytes())
    with pytest.raises(CodecError, match="trailing"):
        decode_symbols(bytes([2, 4]) + z + b"junk", 500)
    with pytest.raises(CodecError):
        decode_symbols(bytes([2, 4]) + z, 499)
    with pytest.raises(CodecError, match="alphabet"):
        decode_symbols(bytes([2, 3]) + z, 500)  # symbol 3 is outside alphabet 3
    with pytest.raises(CodecError, match="expected 4"):
        decode_symbols(bytes([0, 8]) + s.tobytes(), 500, alphabet=4)
    body = encode_symbols(s, 4, "ans")
    with pytest.raises(CodecError, match="ANS"):
        decode_symbols(body[:-4] + b"\x01\x02\x03\x04", 500)
    with pytest.raises(CodecError):
        decode_symbols(bytes([1, 4, 0, 0, 0, 0]) + b"\x01\x00\x00\x00", 500)
    with pytest.raises(CodecError, match="method"):
        decode_symbols(bytes([7, 4]), 5)
    with pytest.raises(CodecError, match="outside"):
        encode_symbols(np.array([5], np.uint8), 4)


@pytest.mark.parametrize("values", ["fp32", "fp16", "bf16", "q8", "q4", "ternary"])
def test_lowrank_round_trip(values):
    fs = [rng.standard_normal((64, 4)).astype(np.float32),
          rng.standard_normal((4, 32)).astype(np.float32)]
    shapes = [f.shape for f in fs]
    out = lowrank.decode(lowrank.encode(fs, values), shapes)
    assert [o.shape for o in out] == shapes
    if values == "fp32":
        for f, o in zip(fs, out):
            np.testing.assert_array_equal(f, o)
        assert not lowrank.is_lossy(values=values)
    else:
        assert lowrank.is_lossy(values=values)


def test_lowrank_requires_matrices():
    with pytest.raises(CodecError, match="2-D"):
        lowrank.encode([np.ones(3)])
    with pytest.raises(CodecError, match="2-D"):
        lowrank.decode(lowrank.encode([np.ones((3, 1))]), [(3,)])


def test_value_specs():
    assert VALUE_SPECS[:3] == ("fp32", "fp16", "bf16")
    for s in VALUE_SPECS:
        parse_spec(s)
    for bad in ("q0", "q9", "int8", "fp64"):
        with pytest.raises(CodecError, match="value spec"):
            parse_spec(bad)
