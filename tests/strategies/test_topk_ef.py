"""topk-ef: global top-k of the update with error feedback; nothing computed is lost."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import RecordDict

from fedsqueeze.codecs import decode_sparse_parts, get_codec, log2_binom
from fedsqueeze.strategies.payload import read_payload, unpack
from fedsqueeze.strategies.registry import get_method
from fedsqueeze.strategies.run_model import build_run_model
from fedsqueeze.strategies.settings import RunSettings
from fedsqueeze.strategies.state import load_array_list
from fedsqueeze.strategies.tensors import flatten, load_arrays, model_arrays, unflatten

F = np.float32
N = 118_282  # fc2


def _round(method, strategy, state, rng, t):
    """One message each way with a random local update; (update, sent vector, server model)."""
    global_vec = flatten(list(strategy.round_arrays.values()))
    side = method.client()
    side.server_round = t
    model = side.receive(strategy.encode_down(t, 5, strategy.round_arrays), state,
                         build_run_model(method.settings))
    shapes = [a.shape for a in model_arrays(model).values()]
    local = np.add(global_vec, (rng.standard_normal(N) * 0.01).astype(F), dtype=F)
    load_arrays(model, unflatten(local, shapes))
    update = np.subtract(local, global_vec, dtype=F)  # the update as the client computes it
    reply = side.send(model, state)
    part = decode_sparse_parts(unpack(reply, get_codec("sparse").stype), [(N,)])[0]
    sent = np.zeros(N, F)
    sent[part.indices] = part.values
    server_model = flatten(list(strategy.decode_up(t, 5, reply).values()))
    return update, sent, server_model, reply


@pytest.mark.parametrize("values", ["fp32", "fp16"])
def test_sent_plus_remainder_equals_the_updates_over_ten_rounds(values):
    method = get_method("topk-ef")(RunSettings(), {"topk-ef.sparsity": 0.99,
                                                   "topk-ef.values": values})
    strategy = method.server(build_run_model(method.settings))
    state, rng = RecordDict(), np.random.default_rng(0)
    total_update, total_sent, previous = np.zeros(N), np.zeros(N), np.zeros(N, F)
    for t in range(1, 11):
        update, sent, _, _ = _round(method, strategy, state, rng, t)
        remainder = load_array_list(state, "topk-ef.error")[0][0]
        # entry by entry, exactly, in float32: what was sent plus what is kept is the update
        # plus what was kept before
        assert np.array_equal(np.add(sent, remainder, dtype=F), np.add(update, previous, dtype=F))
        total_update += update
        total_sent += sent
        previous = remainder
        assert np.count_nonzero(sent) == int(N * 0.01)
    np.testing.assert_allclose(total_sent + previous, total_update, atol=1e-5)


def test_the_server_adds_the_sent_update_to_the_model_it_sent():
    method = get_method("topk-ef")(RunSettings(), {})
    strategy = method.server(build_run_model(method.settings))
    g = flatten(list(strategy.round_arrays.values()))
    _, sent, server_model, _ = _round(method, strategy, RecordDict(), np.random.default_rng(1), 1)
    assert np.array_equal(server_model, np.add(g, sent, dtype=F))


def test_the_uplink_is_coded_positions_plus_values_near_the_bound():
    method = get_method("topk-ef")(RunSettings(), {"topk-ef.sparsity": 0.99})
    strategy = method.server(build_run_model(method.settings))
    *_, reply = _round(method, strategy, RecordDict(), np.random.default_rng(2), 1)
    size = len(read_payload(reply)[1])
    k = int(N * 0.01)
    bound = log2_binom(N, k) / 8 + 4 * k
    assert bound < size <= 1.05 * bound + 32


def test_without_error_feedback_nothing_is_kept():
    method = get_method("topk-ef")(RunSettings(), {"topk-ef.error-feedback": False})
    strategy = method.server(build_run_model(method.settings))
    state = RecordDict()
    _round(method, strategy, state, np.random.default_rng(3), 1)
    assert load_array_list(state, "topk-ef.error") is None


def test_keys_are_validated():
    from fedsqueeze.strategies.settings import ConfigError

    with pytest.raises(ConfigError, match="topk-ef.values"):
        get_method("topk-ef")(RunSettings(), {"topk-ef.values": "int3"})
    torch.manual_seed(0)


def test_quantized_values_are_what_the_server_adds_and_shrink_the_uplink():
    sizes = {}
    for values in ("fp32", "q4"):
        method = get_method("topk-ef")(RunSettings(), {"topk-ef.values": values})
        strategy = method.server(build_run_model(method.settings))
        g = flatten(list(strategy.round_arrays.values()))
        state = RecordDict()
        update, sent, server_model, reply = _round(method, strategy, state,
                                                   np.random.default_rng(4), 1)
        assert np.array_equal(server_model, np.add(g, sent, dtype=F))
        remainder = load_array_list(state, "topk-ef.error")[0][0]
        np.testing.assert_allclose(sent + remainder, update, atol=1e-6)
        sizes[values] = len(read_payload(reply)[1])
    assert sizes["q4"] < 0.5 * sizes["fp32"]
