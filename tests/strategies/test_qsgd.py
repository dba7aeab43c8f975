"""qsgd: stochastic b-bit quantization of the update, unbiased, seeded, b bits at most."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import RecordDict

from fedsqueeze.codecs import get_codec
from fedsqueeze.codecs.entropy import symbol_entropy_bits
from fedsqueeze.strategies.methods.qsgd import NORMS_RECORD, dequantize, quantize
from fedsqueeze.strategies.payload import PAYLOAD_RECORD, unpack
from fedsqueeze.strategies.registry import get_method
from fedsqueeze.strategies.run_model import build_run_model
from fedsqueeze.strategies.settings import ConfigError, RunSettings
from fedsqueeze.strategies.state import load_array_list
from fedsqueeze.strategies.tensors import flatten, load_arrays, model_arrays, unflatten

F = np.float32
N = 118_282  # fc2


def _method(**keys):
    method = get_method("qsgd")(RunSettings(), {f"qsgd.{k}": v for k, v in keys.items()})
    return method, method.server(build_run_model(method.settings))


def _round(method, strategy, state, rng, t, seed=7):
    """One message each way with a random local update: (update, what the server decoded,
    server model, reply)."""
    global_vec = flatten(list(strategy.round_arrays.values()))
    side = method.client()
    side.server_round, side.rounding_seed = t, seed + t
    model = side.receive(strategy.encode_down(t, 5, strategy.round_arrays), state,
                         build_run_model(method.settings))
    shapes = [a.shape for a in model_arrays(model).values()]
    local = np.add(global_vec, (rng.standard_normal(N) * 0.01).astype(F), dtype=F)
    load_arrays(model, unflatten(local, shapes))
    reply = side.send(model, state)
    decoded = strategy.decode_update(t, 5, reply, N)
    server_model = flatten(list(strategy.decode_up(t, 5, reply).values()))
    return np.subtract(local, global_vec, dtype=F), decoded, server_model, reply


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
def test_the_uplink_carries_at_most_bits_per_entry_near_the_entropy(bits):
    method, strategy = _method(bits=bits)
    *_, reply = _round(method, strategy, RecordDict(), np.random.default_rng(1), 1)
    symbols_bytes = len(unpack(reply, get_codec("entropy").stype))
    norms_bytes = len(unpack(reply, get_codec("dense").stype, NORMS_RECORD))
    buckets = -(-N // 512)
    assert norms_bytes <= 4 * buckets + 64
    assert symbols_bytes <= N * bits / 8 + 1024  # b bits per entry at most, plus the table
    (symbols,) = get_codec("entropy").decode(unpack(reply, get_codec("entropy").stype),
                                             [(N,)], alphabet=2 ** bits - 1)
    assert symbols.max() < 2 ** bits - 1  # 2s + 1 signed levels
    entropy_bytes = symbol_entropy_bits(symbols, 2 ** bits - 1) / 8
    assert symbols_bytes <= 1.02 * entropy_bytes + 1024


def test_rounding_repeats_for_a_seed_and_differs_across_seeds():
    method, strategy = _method()
    rng = np.random.default_rng(2)
    update = (rng.standard_normal(N) * 0.01).astype(F)
    a = quantize(update, 7, 512, np.random.default_rng(5))[1]
    b = quantize(update, 7, 512, np.random.default_rng(5))[1]
    c = quantize(update, 7, 512, np.random.default_rng(6))[1]
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_the_server_adds_the_decoded_update_to_the_model_it_sent():
    method, strategy = _method()
    g = flatten(list(strategy.round_arrays.values()))
    update, decoded, server_model, _ = _round(method, strategy, RecordDict(),
                                              np.random.default_rng(3), 1)
    assert np.array_equal(server_model, np.add(g, decoded, dtype=F))
    relative = np.linalg.norm(decoded - update) / np.linalg.norm(update)
    assert 0 < relative < 1.5  # lossy, yet an estimate of the update


def test_error_feedback_keeps_exactly_what_was_not_delivered_over_ten_rounds():
    method, strategy = _method(**{"error-feedback": True, "bits": 2})
    state, rng, previous = RecordDict(), np.random.default_rng(4), np.zeros(N, F)
    total_update, total_decoded = np.zeros(N), np.zeros(N)
    for t in range(1, 11):
        update, decoded, _, _ = _round(method, strategy, state, rng, t)
        remainder = load_array_list(state, "qsgd.error")[0][0]
        owed = np.add(update, previous, dtype=F)
        # the memory is exactly what the server did not get (one float32 subtraction) ...
        assert np.array_equal(remainder, np.subtract(owed, decoded, dtype=F))
        # ... so delivered + kept is the update plus the old memory up to one rounding
        gap = np.abs(decoded.astype(np.float64) + remainder - owed)
        assert np.all(gap <= np.spacing(np.maximum(np.abs(decoded), np.abs(remainder))))
        total_update += update
        total_decoded += decoded
        previous = remainder
    np.testing.assert_allclose(total_decoded + previous, total_update, atol=1e-4)


def test_without_error_feedback_nothing_is_kept():
    method, strategy = _method()
    state = RecordDict()
    _round(method, strategy, state, np.random.default_rng(5), 1)
    assert load_array_list(state, "qsgd.error") is None


def test_send_before_train_is_refused():
    method, strategy = _method()
    side = method.client()
    with pytest.raises(RuntimeError, match="before train"):
        side.send(build_run_model(method.settings), RecordDict())


@pytest.mark.parametrize("key,value", [("bits", 1), ("bits", 9), ("bucket", 0)])
def test_keys_are_validated(key, value):
    with pytest.raises(ConfigError, match=f"qsgd.{key}"):
        _method(**{key: value})


def test_negative_norms_are_refused():
    from fedsqueeze.codecs import CodecError
    from fedsqueeze.strategies.payload import pack

    method, strategy = _method()
    *_, reply = _round(method, strategy, RecordDict(), np.random.default_rng(6), 1)
    norms = -np.ones(-(-N // 512), F)
    reply[NORMS_RECORD] = pack(get_codec("dense").stype,
                               get_codec("dense").encode([norms], dtype="fp32"))
    with pytest.raises(CodecError, match="norms"):
        strategy.decode_update(1, 5, reply, N)
    assert PAYLOAD_RECORD in reply


def test_error_feedback_memory_stays_bounded_only_with_the_contractive_scaling():
    from fedsqueeze.strategies.methods.qsgd import QSGDConfig

    def memory_norms(scale):
        rng, e, norms = np.random.default_rng(0), np.zeros(4096, F), []
        for _ in range(40):
            a = (rng.standard_normal(4096) * 0.01).astype(F) + e
            e = a - dequantize(*quantize(a, 1, 512, rng), 1, 512) * F(scale)
            norms.append(float(np.linalg.norm(e)))
        return norms

    scaled = memory_norms(QSGDConfig(bits=2).scale(memory=True))
    assert max(scaled[20:]) < 1.5 * max(scaled[10:20])   # levels off (about 4x one update)
    assert memory_norms(1.0)[-1] > 1000 * scaled[-1]      # unscaled 2-bit QSGD explodes
    assert QSGDConfig(bits=2).scale(memory=False) == 1.0   # unbiased without a memory
