"""The dense channel (FedAvg's default both ways): the model as one payload of raw floats or
uniform b-bit values; through `Compressed` and `compression_mod`; malformed bytes rejected."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from fedsqueeze.codecs import CodecError, get_codec
from fedsqueeze.strategies.channels.dense import Dense
from fedsqueeze.strategies.folding import unfold
from fedsqueeze.strategies.payload import PAYLOAD_RECORD, pack, read_payload
from fedsqueeze.strategies.settings import ConfigError

F = np.float32
SHAPES = [(300, 40), (40,), (40, 10), (10,)]


def _arrays(seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(s) * 0.1).astype(F) for s in SHAPES]


def test_fp32_travels_bit_exactly_both_ways(channel_loop):
    loop = channel_loop(Dense(), Dense())
    exchange = loop.run_round()
    (node,) = exchange.decoded
    assert all(np.array_equal(r, b) for r, b in zip(exchange.received[node], exchange.before))
    local = [np.add(r, u, dtype=F) for r, u in zip(exchange.received[node],
                                                    exchange.update[node])]
    assert all(np.array_equal(d, x) for d, x in zip(exchange.decoded[node], local))


def test_fp16_downlink_is_what_the_client_trains_from_within_fp16_rounding(channel_loop):
    loop = channel_loop(Dense(), Dense("fp16"))
    exchange = loop.run_round()
    (node,) = exchange.decoded
    for r, b in zip(exchange.received[node], exchange.before):
        np.testing.assert_allclose(r, b, rtol=2**-10, atol=1e-7)


def test_dense_fp32_payload_is_four_bytes_per_value_plus_a_small_header():
    n = sum(a.size for a in _arrays())
    _, payload = read_payload(RecordDict(Dense().encode(_arrays()).records))
    assert n * 4 < len(payload) <= n * 4 + 64


@pytest.mark.parametrize("mangle", [
    lambda b: b[:-1],                    # truncated
    lambda b: b + b"\0",                 # trailing garbage
    lambda b: b"XXXX" + b[4:],           # wrong magic
    lambda b: b[:20],                    # header only
    lambda b: b"",                       # empty
])
def test_malformed_payload_is_rejected_with_codec_error(mangle):
    _, good = read_payload(RecordDict(Dense().encode(_arrays()).records))
    content = RecordDict({PAYLOAD_RECORD: pack(get_codec("dense").stype, mangle(good))})
    with pytest.raises(CodecError):
        Dense().decode(content, SHAPES)


def test_payload_of_another_codec_version_or_none_is_rejected():
    with pytest.raises(CodecError, match="does not match expected"):
        Dense().decode(RecordDict({PAYLOAD_RECORD: pack("fedsqueeze/dense@999", b"\0" * 10)}),
                       SHAPES)
    with pytest.raises(CodecError, match="no 'payload'"):
        Dense().decode(RecordDict({"other": ArrayRecord()}), SHAPES)


@pytest.mark.parametrize("bits", [8, 4])
def test_uniform_b_bit_values_travel_as_quant_payloads_within_their_step(bits):
    arrays = _arrays()
    coded = Dense(f"q{bits}").encode(arrays)
    stype, payload = read_payload(RecordDict(coded.records))
    assert stype == get_codec("quant").stype
    n = sum(a.size for a in arrays)
    assert len(payload) <= n * bits / 8 + 64 * len(arrays) + 1024  # b bits per value at most
    decoded = Dense(f"q{bits}").decode(RecordDict(coded.records), SHAPES)
    for a, b, d in zip(arrays, decoded, coded.delivered()):
        step = (a.max() - a.min()) / (2 ** bits - 1)
        assert np.abs(a - b).max() <= step / 2 + 1e-6
        assert np.array_equal(b, d)  # `delivered` is what the receiver decodes


def test_an_unknown_value_format_is_refused():
    with pytest.raises(ConfigError, match="dense.dtype"):
        Dense("q9")


def test_a_rounds_model_is_encoded_once_for_every_node(channel_loop):
    loop = channel_loop(Dense(), Dense(), clients=3)
    messages = list(loop.strategy.configure_train(1, loop.arrays, ConfigRecord(), loop.grid))
    coded = {id(read_payload(unfold(m.content))[1]) for m in messages}
    assert len(messages) == 3 and len(coded) == 1  # one payload object shared by all
