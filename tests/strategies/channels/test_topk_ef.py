"""topk-ef: global top-k of the update with error feedback; nothing computed is lost."""

from __future__ import annotations

import numpy as np
import pytest

from fedsqueeze.codecs import log2_binom
from fedsqueeze.strategies.channels.topk_ef import TopKEF
from fedsqueeze.strategies.mods import ERROR
from fedsqueeze.strategies.payload import read_payload
from fedsqueeze.strategies.settings import ConfigError
from fedsqueeze.strategies.state import load_array_list
from fedsqueeze.strategies.tensors import flatten

F = np.float32


def _sent(loop, exchange, node):
    """The update the server decoded from the node's reply."""
    (reply,) = [r for r in exchange.replies if r.metadata.src_node_id == node]
    return flatten(loop.strategy.uplink.decode(reply.content, [a.shape for a in
                                                                exchange.before]))


@pytest.mark.parametrize("values", ["fp32", "fp16"])
def test_sent_plus_remainder_equals_the_updates_over_ten_rounds(channel_loop, values):
    loop = channel_loop(TopKEF(sparsity=0.99, values=values), None)
    previous = total_update = total_sent = 0
    for _ in range(10):
        exchange = loop.run_round()
        (node,) = exchange.decoded
        update, sent = flatten(exchange.update[node]), _sent(loop, exchange, node)
        remainder = flatten(load_array_list(loop.state(), ERROR)[0])
        # entry by entry, exactly, in float32: what was sent plus what is kept is the update
        # plus what was kept before (fp16: the rounding of a sent value stays in the memory)
        assert np.array_equal(np.add(sent, remainder, dtype=F),
                              np.add(update, previous, dtype=F))
        assert np.count_nonzero(sent) == int(update.size * 0.01)
        total_update, total_sent, previous = total_update + update, total_sent + sent, remainder
    np.testing.assert_allclose(total_sent + previous, total_update, atol=1e-5)


def test_the_server_adds_the_sent_update_to_the_model_it_sent(channel_loop):
    loop = channel_loop(TopKEF(), None)
    exchange = loop.run_round()
    (node,) = exchange.decoded
    assert all(np.array_equal(r, b) for r, b in zip(exchange.received[node], exchange.before))
    assert np.array_equal(flatten(exchange.decoded[node]),
                          np.add(flatten(exchange.before), _sent(loop, exchange, node), dtype=F))


def test_the_uplink_is_coded_positions_plus_values_near_the_bound(channel_loop):
    loop = channel_loop(TopKEF(sparsity=0.99), None)
    exchange = loop.run_round()
    n = flatten(exchange.before).size
    size = len(read_payload(exchange.replies[0].content)[1])
    k = int(n * 0.01)
    bound = log2_binom(n, k) / 8 + 4 * k
    assert bound < size <= 1.05 * bound + 32


def test_without_error_feedback_nothing_is_kept(channel_loop):
    loop = channel_loop(TopKEF(error_feedback=False), None)
    loop.run_round()
    assert load_array_list(loop.state(), ERROR) is None


def test_fields_are_validated():
    with pytest.raises(ConfigError, match="topk-ef.values"):
        TopKEF(values="int3")
    with pytest.raises(ConfigError, match="topk-ef.sparsity"):
        TopKEF(sparsity=1.0)


def test_quantized_values_are_what_the_server_adds_and_shrink_the_uplink(channel_loop):
    sizes = {}
    for values in ("fp32", "q4"):
        loop = channel_loop(TopKEF(values=values), None, seed=4)
        exchange = loop.run_round()
        (node,) = exchange.decoded
        remainder = flatten(load_array_list(loop.state(), ERROR)[0])
        np.testing.assert_allclose(_sent(loop, exchange, node) + remainder,
                                   flatten(exchange.update[node]), atol=1e-6)
        sizes[values] = len(read_payload(exchange.replies[0].content)[1])
    assert sizes["q4"] < 0.5 * sizes["fp32"]
