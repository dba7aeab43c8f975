"""Format stability: payloads written by this format version keep decoding to the same values.

If one of these fails after a change, the byte layout changed: bump the codec's version (or
FORMAT_VERSION) as framing.py's version policy says, then regenerate the hex strings.
"""

import numpy as np
import pytest

import fedsqueeze.codecs as C
from fedsqueeze.codecs.dense import bf16_bits_to_f32, f32_to_bf16_bits

X = np.array(
    [[1.028856873512268, 1.6419200897216797, 1.1467195749282837, -0.9731795191764832,
      -1.3928000926971436, 0.06719635426998138],
     [0.8613508939743042, 0.5091868042945862, 1.8102855682373047, 0.7508434653282166,
      0.6397595405578613, -0.7313225269317627],
     [-1.1077170372009277, 1.4844056367874146, 0.048912402242422104, 0.8115200996398926,
      -1.3764228820800781, -0.43637073040008545],
     [-1.2910916805267334, -0.7756786942481995, 0.9030630588531494, -1.480581283569336,
      -0.5340928435325623, 0.1637885719537735]],
    np.float32)
M = np.array(
    [[0, 1, 1, 1, 0, 1], [0, 1, 0, 0, 0, 0], [0, 1, 1, 1, 0, 0], [0, 0, 0, 0, 1, 1]], bool)
BIG_IDX = np.array(
    [42, 69, 98, 107, 130, 132, 133, 169, 209, 225, 242, 266, 268, 363, 386, 391, 394])
BIG = np.zeros(400, bool)
BIG[BIG_IDX] = True
XS = np.where(M, X, 0).astype(np.float32)

GOLDEN = {
    "dense-fp32": (
        "465a010101010204060000016095b1833f702ad23fb5c7923f4b2279bf4647b2bf3e9e893d7e815c3f115a023f"
        "70b7e73f4737403f48c7233ff4373bbfacc98dbf0101be3f5f58483dc8bf4f3fa02eb0bffc6bdfbe7e42a5bfe1"
        "9246bf242f673fb083bdbf4fba08bf31b8273e"
    ),
    "dense-bf16": (
        "465a0101010102040602000130843fd23f933f79bfb2bf8a3d5d3f023fe83f403f243f3bbf8ebfbe3f483d503f"
        "b0bfdfbea5bf47bf673fbebf09bf283e"
    ),
    "quant-q4": "465a01020101020406030001180400b083bdbf11a8603e0010eb2c709baf3ae2a750310b74",
    "ternary": "465a010301010204060400010d006e55933f000395128546a209",
    "positions-bitmap": (
        "465a01040201019003050001340111000000000004000020000000040800003400000000020000000002000200"
        "0400001400000000000000000000000800008404"
    ),
    "positions-rice": "465a0104020101900305000114021105040005d44ed6a003aa8c1630f770e14602",
    "positions-ans": "465a0104020101900305000112031140d82f44f2288fc3d7a9449cf38c0f01",
    "sparse-fp16": "465a010502010204060100020514010aaee0c0913e963cc9bb4d2c1338f03d432a7e3a46b83e31",
    "masked-q8": (
        "465a01060101020406030836c0dec03179db7c011708004b2279bfd105283c008002ffcf006591f064ae2b6f"
    ),
    "lowrank-fp16": (
        "465a01070101020406010001301e3c913e963cc9bb92bd4d2ce43a13383e3f023a1e39dab96ebcf03d432a7e3a"
        "81bdfbb62abd35ba393becbd46b83e31"
    ),
    "entropy-ans": (
        "465a01080101013c060001250108ff1fee13c305b5049b028e018e01003b16ae84a76223de0e2144f7880b98eb"
        "31040000"
    ),
}


def g(name):
    return bytes.fromhex(GOLDEN[name])


@pytest.mark.parametrize("name", ["dense-fp32", "dense-bf16", "positions-bitmap", "positions-rice",
                                  "positions-ans"])
def test_encoder_reproduces_golden_bytes(name):
    kind, opt = name.split("-")
    if kind == "dense":
        p = C.get_codec("dense").encode([X], opt)
    else:
        p = C.get_codec("positions").encode([BIG], method=opt)
    assert p.hex() == GOLDEN[name]


def test_golden_payloads_decode():
    sh = [X.shape]
    np.testing.assert_array_equal(C.decode_any(g("dense-fp32"), sh)[0], X)
    np.testing.assert_array_equal(C.decode_any(g("dense-bf16"), sh)[0],
                                  bf16_bits_to_f32(f32_to_bf16_bits(X)))
    for name in ("positions-bitmap", "positions-rice", "positions-ans"):
        np.testing.assert_array_equal(C.decode_any(g(name), [(400,)])[0], BIG)
    np.testing.assert_array_equal(C.decode_any(g("sparse-fp16"), sh)[0],
                                  XS.astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(C.decode_any(g("lowrank-fp16"), sh)[0],
                                  X.astype(np.float16).astype(np.float32))
    q = C.decode_any(g("quant-q4"), sh)[0]
    np.testing.assert_array_equal(
        q, C.get_codec("quant").decode(C.get_codec("quant").encode([X], 4), sh)[0])
    t = C.decode_any(g("ternary"), sh)[0]
    np.testing.assert_array_equal(
        t, C.get_codec("ternary").decode(C.get_codec("ternary").encode([X]), sh)[0])
    mk = C.decode_masked(g("masked-q8"), sh, [M])[0]
    np.testing.assert_array_equal(
        mk, C.decode_masked(C.encode_masked([X], [M], values="q8"), sh, [M])[0])


def test_golden_ans_symbol_model_is_stable():
    ent = C.get_codec("entropy")
    s = ent.decode(g("entropy-ans"), [(60,)], alphabet=8)[0]
    assert s.max() < 8
    assert ent.encode([s], alphabet=8, method="ans") == g("entropy-ans")
