"""Dense codec + framing: round trips and rejection of malformed payloads."""

import math
import struct
import tracemalloc

import numpy as np
import pytest

from fedsqueeze.codecs import CODEC_IDS, CodecError, get_codec
from fedsqueeze.codecs.dense import bf16_bits_to_f32, f32_to_bf16_bits
from fedsqueeze.codecs.framing import MAGIC, pack, write_uvarint

dense = get_codec("dense")
SHAPES = [(3, 4), (), (0, 5), (7,), (2, 3, 2)]


def arrays(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(np.float32) * 10 for s in SHAPES]


def test_facade():
    assert dense.name == "dense" and dense.version == 1 and dense.lossy is False
    assert dense.stype == "fedsqueeze/dense@1"
    assert dense.codec_id == CODEC_IDS["dense"]
    with pytest.raises(CodecError, match="dense"):
        get_codec("no-such-codec")


def test_fp32_exact():
    a = arrays()
    out = dense.decode(dense.encode(a), SHAPES)
    assert [o.shape for o in out] == SHAPES
    for x, y in zip(a, out):
        assert y.dtype == np.float32 and y.flags.writeable
        np.testing.assert_array_equal(x, y)


def test_fp16_matches_numpy_rounding():
    a = arrays(1)
    out = dense.decode(dense.encode(a, "fp16"), SHAPES)
    for x, y in zip(a, out):
        np.testing.assert_array_equal(y, x.astype(np.float16).astype(np.float32))
        assert np.all(np.abs(y - x) <= np.abs(x) * 2.0**-11 + 2.0**-25)


def _bf16_reference(v: float) -> float:
    """Nearest bf16 to the fp32 value v, ties to even, by exhaustive neighbour search."""
    u = struct.unpack("<I", struct.pack("<f", v))[0]
    lo = u & 0xFFFF0000
    cands = [lo, lo + 0x10000]
    vals = [struct.unpack("<f", struct.pack("<I", c & 0xFFFFFFFF))[0] for c in cands]
    d = [abs(c - v) if math.isfinite(c) else math.inf for c in vals]
    if d[0] < d[1]:
        return vals[0]
    if d[1] < d[0]:
        return vals[1]
    return vals[0] if (cands[0] >> 16) % 2 == 0 else vals[1]


def test_bf16_round_to_nearest_even():
    specials = [1.0, 1.0 + 2**-8, 1.0 + 3 * 2**-8, 1.0 + 2**-8 + 2**-20, -1.0 - 2**-8, 3.0e38,
                1e-40, 0.0, -0.0]
    rng = np.random.default_rng(2)
    vals = np.concatenate([np.array(specials, np.float32),
                           rng.standard_normal(500).astype(np.float32) * 1e3])
    got = bf16_bits_to_f32(f32_to_bf16_bits(vals))
    ref = np.array([_bf16_reference(float(v)) for v in vals], np.float32)
    np.testing.assert_array_equal(got.view(np.uint32), ref.view(np.uint32))
    # 1 + 2**-8 is exactly half-way between 1 and 1 + 2**-7: ties go to the even mantissa (1.0)
    assert got[1] == 1.0 and got[2] == 1.0 + 2**-6
    out = dense.decode(dense.encode([vals], "bf16"), [vals.shape])[0]
    np.testing.assert_array_equal(out, got)
    assert np.all(np.abs(out - vals) <= np.abs(vals) * 2.0**-8 + 2.0**-133)


def test_bf16_nan_stays_nan():
    x = np.array([np.nan, np.inf, -np.inf], np.float32)
    y = bf16_bits_to_f32(f32_to_bf16_bits(x))
    assert np.isnan(y[0]) and y[1] == np.inf and y[2] == -np.inf


def test_per_tensor_dtypes_and_input_types():
    a = [np.arange(6, dtype=np.float64).reshape(2, 3), np.arange(4, dtype=np.int32)]
    p = dense.encode(a, ["fp16", "bf16"])
    out = dense.decode(p, [(2, 3), (4,)])
    np.testing.assert_array_equal(out[0], a[0])
    np.testing.assert_array_equal(out[1], a[1])
    assert dense.is_lossy(dtype="fp16") and not dense.is_lossy(dtype="fp32")


def test_encode_rejects_nonfinite_and_overflow():
    with pytest.raises(CodecError, match="non-finite"):
        dense.encode([np.array([1.0, np.nan], np.float32)])
    with pytest.raises(CodecError, match="overflow fp16"):
        dense.encode([np.array([1e6], np.float32)], "fp16")
    with pytest.raises(CodecError, match="dtype"):
        dense.encode([np.ones(2)], "fp8")
    p = dense.encode([np.array([np.inf], np.float32)], allow_nonfinite=True)
    with pytest.raises(CodecError, match="non-finite"):
        dense.decode(p, [(1,)])
    assert dense.decode(p, [(1,)], allow_nonfinite=True)[0][0] == np.inf


def test_header_is_small():
    p = dense.encode([np.zeros(1000, np.float32)])
    assert len(p) - 4000 <= 16


# ------------------------------------------------------------------ malformed payloads
GOOD = dense.encode([np.ones((3, 4), np.float32), np.ones(7, np.float32)], "fp16")
GS = [(3, 4), (7,)]


def _hdr(codec_id=1, version=1, fmt=1, magic=MAGIC, tensors=(((3, 4), 1), ((7,), 1)),
         sections=None, params=b""):
    h = bytearray(magic) + bytes([fmt, codec_id, version])
    write_uvarint(h, len(tensors))
    for shape, dt in tensors:
        h.append(len(shape))
        for d in shape:
            write_uvarint(h, d)
        h.append(dt)
    write_uvarint(h, len(params))
    h += params
    sections = sections if sections is not None else [b"\0" * 24, b"\0" * 14]
    write_uvarint(h, len(sections))
    for s in sections:
        write_uvarint(h, len(s))
    return bytes(h) + b"".join(sections)


@pytest.mark.parametrize(
    "payload,field",
    [
        (b"", "truncated"),
        (GOOD[:3], "truncated"),
        (GOOD[:-1], "truncated"),
        (GOOD[:12], "truncated"),
        (GOOD + b"\0", "trailing"),
        (b"XY" + GOOD[2:], "magic"),
        (_hdr(fmt=2), "format version"),
        (_hdr(codec_id=2), "codec id"),
        (_hdr(version=9), "codec version"),
        (_hdr(tensors=(((3, 4), 1),)), "tensor count"),
        (_hdr(tensors=(((4, 3), 1), ((7,), 1))), "dim 0"),
        (_hdr(tensors=(((3, 4, 1), 1), ((7,), 1))), "ndim"),
        (_hdr(tensors=(((3, 4), 9), ((7,), 1))), "dtype"),
        (_hdr(tensors=(((3, 4), 3), ((7,), 1))), "dtype"),
        (_hdr(sections=[b"\0" * 24]), "section count"),
        (_hdr(sections=[b"\0" * 20, b"\0" * 18]), "section 0 length"),
        (_hdr(params=b"x"), "params"),
        (_hdr()[:-5], "truncated"),
    ],
)
def test_rejects_malformed(payload, field):
    with pytest.raises(CodecError, match=field):
        dense.decode(payload, GS)


def test_good_reference_decodes():
    assert len(dense.decode(_hdr(), GS)) == 2


def test_rejects_oversized_before_parsing():
    with pytest.raises(CodecError, match="oversized"):
        dense.decode(GOOD + b"\0" * 10_000, GS)


def test_rejects_non_bytes():
    with pytest.raises(CodecError, match="bytes"):
        dense.decode("not bytes", GS)


def test_rejects_nonfinite_fp16_values():
    bad = _hdr(sections=[b"\x00\x7c" * 12, b"\0" * 14])  # fp16 +inf
    with pytest.raises(CodecError, match="non-finite"):
        dense.decode(bad, GS)


def test_bad_varints():
    h = bytearray(MAGIC) + bytes([1, 1, 1]) + b"\xff" * 11
    with pytest.raises(CodecError, match="tensor count"):
        dense.decode(bytes(h), GS)
    h = bytearray(MAGIC) + bytes([1, 1, 1]) + b"\x82\x00"  # non-minimal 2
    with pytest.raises(CodecError, match="minimal"):
        dense.decode(bytes(h), GS)


def test_tiny_payload_with_huge_shape_allocates_nothing():
    # 20-ish bytes claiming a 2**48 x 2**48 tensor
    evil = _hdr(tensors=(((2**48, 2**48), 0),), sections=[b"\0" * 4])
    assert len(evil) < 32
    tracemalloc.start()
    try:
        for shapes in ([(2**48, 2**48)], [(3, 4)], [(10**9,)]):
            with pytest.raises(CodecError):
                dense.decode(evil, shapes)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
    # the receiver expects a huge tensor, payload is tiny: reject before allocating
    with pytest.raises(CodecError, match="section 0 length"):
        dense.decode(evil, [(2**48, 2**48)])


def test_pack_rejects_bad_inputs():
    with pytest.raises(CodecError):
        pack(0, 1, [], [])
    with pytest.raises(CodecError):
        pack(1, 1, [((1,) * 17, 0)], [b""])
