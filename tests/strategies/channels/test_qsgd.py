"""qsgd: stochastic b-bit quantization of the update, unbiased, seeded, b bits at most."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import RecordDict

from fedsqueeze.codecs import CodecError, get_codec
from fedsqueeze.codecs.entropy import symbol_entropy_bits
from fedsqueeze.strategies.channels.qsgd import NORMS_RECORD, QSGD, dequantize, quantize
from fedsqueeze.strategies.mods import ERROR
from fedsqueeze.strategies.payload import pack, unpack
from fedsqueeze.strategies.settings import ConfigError
from fedsqueeze.strategies.state import load_array_list
from fedsqueeze.strategies.tensors import flatten

F = np.float32


def _decoded_update(loop, exchange):
    (reply,) = exchange.replies
    channel = loop.strategy.uplink
    return flatten(channel.decode(reply.content, [a.shape for a in exchange.before],
                                  memory=channel.error_feedback))


@pytest.mark.parametrize("bits", [2, 4])
def test_quantization_is_unbiased_over_seeds(bits):
    rng = np.random.default_rng(0)
    update = (rng.standard_normal(3000) * rng.uniform(0.1, 2, 3000)).astype(F)
    levels, bucket, draws = (1 << (bits - 1)) - 1, 512, 2000
    total = np.zeros(update.size)
    for seed in range(draws):
        total += dequantize(*quantize(update, levels, bucket, np.random.default_rng(seed)),
                            levels, bucket)
    mean = total / draws
    # each draw is within one level of u_i, so the mean of `draws` unbiased draws is within
    # ~4 standard errors (level / (2 sqrt(draws))); a biased rounding would be off by ~level/2
    norms = np.repeat(quantize(update, levels, bucket, rng)[0], bucket)[:update.size]
    standard_error = norms / levels / (2 * np.sqrt(draws))
    assert np.all(np.abs(mean - update) <= 5 * standard_error + 1e-6)
    one_draw = dequantize(*quantize(update, levels, bucket, rng), levels, bucket)
    assert np.abs(one_draw - update).mean() > 10 * np.abs(mean - update).mean()


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_the_uplink_carries_at_most_bits_per_entry_near_the_entropy(channel_loop, bits):
    loop = channel_loop(QSGD(bits=bits), None)
    exchange = loop.run_round()
    n = flatten(exchange.before).size
    reply = exchange.replies[0].content
    symbols_bytes = len(unpack(reply, get_codec("entropy").stype))
    norms_bytes = len(unpack(reply, get_codec("dense").stype, NORMS_RECORD))
    assert norms_bytes <= 4 * -(-n // 512) + 64
    assert symbols_bytes <= n * bits / 8 + 1024  # b bits per entry at most, plus the table
    (symbols,) = get_codec("entropy").decode(unpack(reply, get_codec("entropy").stype),
                                             [(n,)], alphabet=2 ** bits - 1)
    assert symbols.max() < 2 ** bits - 1  # 2s + 1 signed levels
    entropy_bytes = symbol_entropy_bits(symbols, 2 ** bits - 1) / 8
    assert symbols_bytes <= 1.02 * entropy_bytes + 1024


def test_rounding_repeats_for_a_seed_and_differs_across_seeds():
    rng = np.random.default_rng(2)
    update = [(rng.standard_normal(5000) * 0.01).astype(F)]
    a, b, c = (QSGD().encode(update, seed=s).delivered()[0] for s in (5, 5, 6))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_the_server_adds_the_decoded_update_to_the_model_it_sent(channel_loop):
    loop = channel_loop(QSGD(), None, seed=3)
    exchange = loop.run_round()
    (node,) = exchange.decoded
    decoded = _decoded_update(loop, exchange)
    assert np.array_equal(flatten(exchange.decoded[node]),
                          np.add(flatten(exchange.before), decoded, dtype=F))
    update = flatten(exchange.update[node])
    assert 0 < np.linalg.norm(decoded - update) / np.linalg.norm(update) < 1.5  # lossy, yet
    # an estimate of the update


def test_error_feedback_keeps_exactly_what_was_not_delivered_over_ten_rounds(channel_loop):
    loop = channel_loop(QSGD(bits=2, error_feedback=True), None, seed=4)
    previous, total_update, total_decoded = np.zeros(1, F), 0, 0
    for _ in range(10):
        exchange = loop.run_round()
        (node,) = exchange.decoded
        update, decoded = flatten(exchange.update[node]), _decoded_update(loop, exchange)
        remainder = flatten(load_array_list(loop.state(), ERROR)[0])
        owed = np.add(update, previous, dtype=F)
        # the memory is exactly what the server did not get (one float32 subtraction) ...
        assert np.array_equal(remainder, np.subtract(owed, decoded, dtype=F))
        # ... so delivered + kept is the update plus the old memory up to one rounding
        gap = np.abs(decoded.astype(np.float64) + remainder - owed)
        assert np.all(gap <= np.spacing(np.maximum(np.abs(decoded), np.abs(remainder))))
        total_update, total_decoded, previous = (total_update + update,
                                                 total_decoded + decoded, remainder)
    np.testing.assert_allclose(total_decoded + previous, total_update, atol=1e-4)


def test_without_error_feedback_nothing_is_kept(channel_loop):
    loop = channel_loop(QSGD(), None)
    loop.run_round()
    assert load_array_list(loop.state(), ERROR) is None


@pytest.mark.parametrize("field,value", [("bits", 1), ("bits", 9), ("bucket", 0)])
def test_fields_are_validated(field, value):
    with pytest.raises(ConfigError, match=f"qsgd.{field}"):
        QSGD(**{field: value})


def test_negative_norms_are_refused():
    coded = QSGD().encode([np.ones(1000, F)], seed=1)
    content = RecordDict(dict(coded.records))
    content[NORMS_RECORD] = pack(get_codec("dense").stype,
                                 get_codec("dense").encode([-np.ones(2, F)], dtype="fp32"))
    with pytest.raises(CodecError, match="norms"):
        QSGD().decode(content, [(1000,)])


def test_error_feedback_memory_stays_bounded_only_with_the_contractive_scaling():
    def memory_norms(scale):
        rng, e, norms = np.random.default_rng(0), np.zeros(4096, F), []
        for _ in range(40):
            a = (rng.standard_normal(4096) * 0.01).astype(F) + e
            e = a - dequantize(*quantize(a, 1, 512, rng), 1, 512) * F(scale)
            norms.append(float(np.linalg.norm(e)))
        return norms

    scaled = memory_norms(QSGD(bits=2).scale(memory=True))
    assert max(scaled[20:]) < 1.5 * max(scaled[10:20])   # levels off (about 4x one update)
    assert memory_norms(1.0)[-1] > 1000 * scaled[-1]      # unscaled 2-bit QSGD explodes
    assert QSGD(bits=2).scale(memory=False) == 1.0        # unbiased without a memory
