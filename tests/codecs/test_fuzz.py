"""Fuzz every decoder with mutated and random payloads (hypothesis, derandomized).

The only exception a decoder may raise is ``CodecError``; a payload it accepts decodes to
exactly the expected shapes; nothing hangs (per-example deadline + a faulthandler watchdog);
peak traced memory per decode stays under max(64 MB, 16 x payload size).

CI runs FEDSQUEEZE_FUZZ_EXAMPLES (default 1,000) payloads per decoder; ``bench/codecs_fuzz.py``
runs the same test with 100,000 and prints the counts.
"""

from __future__ import annotations

import faulthandler
import os
import struct
import sys
import tracemalloc
from datetime import timedelta

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from fedsqueeze.codecs import CodecError, encode_masked, encode_sparse, get_codec
from fedsqueeze.codecs.framing import DTYPE_CODES, pack, unpack
from fedsqueeze.codecs.quant import encode_quant
from fedsqueeze.codecs.ternary import encode_ternary

N_EXAMPLES = int(os.environ.get("FEDSQUEEZE_FUZZ_EXAMPLES", "1000"))
MEM_FLOOR = 64 << 20
COUNTS: dict[str, int] = {}

rng = np.random.default_rng(1234)


def _x(shape, density=1.0):
    x = rng.standard_normal(shape).astype(np.float32)
    return np.where(rng.random(shape) < density, x, 0).astype(np.float32)


def _seeds_dense():
    sh = [(6, 5), (11,), ()]
    a = [_x(s) for s in sh]
    return sh, [get_codec("dense").encode(a, d) for d in ("fp32", "fp16", "bf16")] + [
        get_codec("dense").encode(a, ["fp16", "fp32", "bf16"])], {}


def _values_frame(codec, shapes, bodies_codes):
    return pack(codec.codec_id, codec.version, [(s, c) for s, (c, _) in zip(shapes, bodies_codes)],
                [b for _, b in bodies_codes])


def _seeds_quant():
    c = get_codec("quant")
    sh = [(9, 7), (40,)]
    a = [_x(s) for s in sh]
    seeds = [c.encode(a, b, stochastic=s, seed=1) for b in (1, 3, 8) for s in (False, True)]
    for ent in ("raw", "ans", "zstd"):
        seeds.append(_values_frame(c, sh, [(DTYPE_CODES["quant"],
                                            encode_quant(x.reshape(-1), 4, entropy=ent))
                                           for x in a]))
    return sh, seeds, {}


def _seeds_ternary():
    c = get_codec("ternary")
    sh = [(9, 7), (40,)]
    a = [_x(s, 0.7) for s in sh]
    return sh, [c.encode(a), c.encode(a, stochastic=True, seed=2),
                _values_frame(c, sh, [(DTYPE_CODES["ternary"], encode_ternary(x, stochastic=False))
                                      for x in a])], {}


def _seeds_positions():
    c = get_codec("positions")
    sh = [(300,), (7, 9)]
    seeds = []
    for d in (0.0, 0.02, 0.1, 0.5, 1.0):
        ms = [rng.random(s) < d for s in sh]
        seeds += [c.encode(ms, method=m) for m in ("bitmap", "rice", "ans", "auto")]
    return sh, seeds, {}


def _seeds_sparse():
    sh = [(50,), (8, 8)]
    seeds = []
    for d in (0.05, 0.3, 1.0):
        a = [_x(s, d) for s in sh]
        for pm, v in [("bitmap", "fp32"), ("rice", "fp16"), ("ans", "q4"), ("auto", "ternary"),
                      ("rice", "bf16"), ("ans", "q8")]:
            seeds.append(encode_sparse(a, values=v, positions=pm, seed=3))
    return sh, seeds, {}


MASKS = [rng.random((12, 5)) < 0.4, None, rng.random(30) < 0.1]


def _seeds_masked():
    sh = [(12, 5), (6,), (30,)]
    a = [_x(s) for s in sh]
    return sh, [encode_masked(a, MASKS, values=v, seed=4)
                for v in ("fp32", "fp16", "bf16", "q2", "q8", "ternary")], {"masks": MASKS}


def _seeds_lowrank():
    c = get_codec("lowrank")
    sh = [(12, 3), (3, 10)]
    a = [_x(s) for s in sh]
    return sh, [c.encode(a, v) for v in ("fp32", "fp16", "q6", "ternary")], {}


def _seeds_entropy():
    c = get_codec("entropy")
    sh = [(200,), (5, 6)]
    seeds = []
    for alpha in (2, 3, 17, 256):
        s = [np.minimum(rng.geometric(0.4, size=x) - 1, alpha - 1).astype(np.uint8).reshape(x)
             for x in sh]
        seeds += [c.encode(s, alphabet=alpha, method=m) for m in ("raw", "ans", "zstd")]
    return sh, seeds, {}


BIG_N = 2_000_000  # a large expectation: tiny payloads must not allocate beyond the floor


def _seeds_positions_big():
    c = get_codec("positions")
    sh = [(BIG_N,)]
    seeds = [c.encode([rng.random(BIG_N) < d], method=m)
             for d in (1e-5, 1e-3) for m in ("rice", "ans", "auto")]
    return sh, seeds, {}


def _seeds_sparse_big():
    sh = [(BIG_N,)]
    x = np.zeros(BIG_N, np.float32)
    x[rng.choice(BIG_N, 20, replace=False)] = 1.5
    return sh, [encode_sparse([x], values=v, positions=p)
                for v, p in (("fp16", "rice"), ("q4", "ans"))], {}


CASES = {
    "dense": _seeds_dense,
    "quant": _seeds_quant,
    "ternary": _seeds_ternary,
    "positions": _seeds_positions,
    "sparse": _seeds_sparse,
    "masked": _seeds_masked,
    "lowrank": _seeds_lowrank,
    "entropy": _seeds_entropy,
    "positions-bigN": _seeds_positions_big,
    "sparse-bigN": _seeds_sparse_big,
}
# O(n) decodes: fewer examples, still >= 200 in CI
SCALE = {"positions-bigN": 0.2, "sparse-bigN": 0.2}

INTERESTING = [0, 1, 2, 3, 4, 7, 8, 0x7F, 0x80, 0xFE, 0xFF]
BIG = [struct.pack("<f", v) for v in (float("nan"), float("inf"), -float("inf"), -1.0, 3e38,
                                      1e-45)] + [
    b"\xff\xff\xff\xff\x0f", b"\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01", b"\xff\xff\xff\x7f"]


@st.composite
def mutated(draw, seeds, codec, shapes):
    kind = draw(st.sampled_from(["mutate", "mutate", "section", "section", "random", "prefix"]))
    if kind == "random":
        return draw(st.binary(max_size=256))
    base = draw(st.sampled_from(seeds))
    if kind == "prefix":  # a valid header (or part) followed by noise
        cut = draw(st.integers(0, len(base)))
        return base[:cut] + draw(st.binary(max_size=64))
    if kind == "section":  # valid frame, one mutated section (reaches the body decoders)
        f = unpack(base, codec_id=codec.codec_id, codec_versions=codec.read_versions,
                   max_elements=1 << 40)
        secs = [bytes(s) for s in f.sections]
        tens = [(t.shape, t.dtype) for t in f.tensors]
        if secs:
            i = draw(st.integers(0, len(secs) - 1))
            secs[i] = _mutate(draw, bytearray(secs[i]))
        if tens and draw(st.integers(0, 4)) == 0:  # sometimes lie about a value coding
            j = draw(st.integers(0, len(tens) - 1))
            tens[j] = (tens[j][0], draw(st.integers(0, 9)))
        return pack(codec.codec_id, codec.version, tens, secs, params=bytes(f.params))
    return _mutate(draw, bytearray(base))


def _mutate(draw, b: bytearray) -> bytes:
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.integers(0, 7))
        pos = draw(st.integers(0, len(b))) if b is not None else 0
        if op == 0 and b:
            b[min(pos, len(b) - 1)] ^= 1 << draw(st.integers(0, 7))
        elif op == 1 and b:
            b[min(pos, len(b) - 1)] = draw(st.sampled_from(INTERESTING))
        elif op == 2:
            b[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == 3:
            del b[pos : pos + draw(st.integers(1, 8))]
        elif op == 4:
            del b[pos:]
        elif op == 5:
            b += draw(st.binary(min_size=1, max_size=16))
        elif op == 6:
            v = draw(st.sampled_from(BIG))
            b[pos : pos + len(v)] = v
        else:
            b[pos:pos] = b[: draw(st.integers(0, 16))]  # duplicate a prefix chunk
    return bytes(b)


@pytest.mark.parametrize("name", list(CASES))
def test_decoder_survives_fuzz(name):
    codec = get_codec(name.split("-")[0])
    shapes, seeds, kw = CASES[name]()
    n_examples = max(1, int(N_EXAMPLES * SCALE.get(name, 1.0)))
    for s in seeds:  # the seeds themselves are valid
        out = codec.decode(s, shapes, **kw)
        assert [o.shape for o in out] == [tuple(x) for x in shapes]
    count = 0
    worst = [0, 0]

    @settings(derandomize=True, max_examples=n_examples, deadline=timedelta(seconds=2),
              database=None, phases=[Phase.explicit, Phase.generate, Phase.shrink],
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.filter_too_much])
    @given(mutated(seeds, codec, shapes))
    def run(payload):
        nonlocal count
        count += 1
        tracemalloc.start()  # traced only around the decode: tracing hypothesis is 7x slower
        try:
            out = codec.decode(payload, shapes, **kw)
        except CodecError:
            out = None
        finally:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        limit = max(MEM_FLOOR, 16 * len(payload))
        assert peak <= limit, f"peak {peak} bytes > {limit} for a {len(payload)}-byte payload"
        if peak > worst[0]:
            worst[:] = [peak, len(payload)]
        if out is not None:
            assert [o.shape for o in out] == [tuple(x) for x in shapes]

    # a hang kills the run with a traceback
    faulthandler.dump_traceback_later(max(120, n_examples // 20), exit=True)
    try:
        run()
    finally:
        faulthandler.cancel_dump_traceback_later()
    COUNTS[name] = count
    print(f"\nfuzz {name}: {count} payloads, worst peak {worst[0]} B (payload {worst[1]} B)",
          file=sys.stderr)
    assert count >= n_examples
