"""FedAvg carries the model as one dense payload both ways; malformed bytes are rejected."""

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, RecordDict

from fedsqueeze.codecs import CodecError
from fedsqueeze.strategies.payload import (
    IDENTITY_RECORD,
    PAYLOAD_RECORD,
    identity_record,
    pack,
    read_payload,
)
from fedsqueeze.strategies.registry import get_method
from fedsqueeze.strategies.run_model import build_run_model
from fedsqueeze.strategies.settings import RunSettings
from fedsqueeze.strategies.tensors import model_arrays


def _method(dtype="fp32"):
    settings = RunSettings()
    return get_method("fedavg")(settings, {"fedavg.dtype": dtype})


def test_client_upload_decodes_on_the_server_bit_exactly():
    method = _method()
    model = build_run_model(method.settings)
    strategy, client = method.server(model), method.client()
    content = client.send(model, RecordDict())
    content[IDENTITY_RECORD] = identity_record(0)
    decoded = strategy.decode_up(1, 7, content)
    for (k1, v1), (k2, v2) in zip(decoded.items(), model_arrays(model).items()):
        assert k1 == k2 and np.array_equal(v1, v2)


def test_server_download_loads_into_a_fresh_client_model():
    method = _method("fp16")
    server_model = build_run_model(method.settings)
    strategy, client = method.server(server_model), method.client()
    content = strategy.encode_down(1, 7, model_arrays(server_model))
    fresh = build_run_model(RunSettings(seed=123))
    client.receive(content, RecordDict(), fresh)
    for a, b in zip(fresh.parameters(), server_model.parameters()):
        torch.testing.assert_close(a, b, rtol=2**-10, atol=1e-7)


def test_dense_fp32_payload_is_four_bytes_per_value_plus_a_small_header():
    method = _method()
    model = build_run_model(method.settings)
    _, payload = read_payload(method.client().send(model, RecordDict()))
    assert 118_282 * 4 < len(payload) <= 118_282 * 4 + 64


@pytest.mark.parametrize("mangle", [
    lambda b: b[:-1],                    # truncated
    lambda b: b + b"\0",                 # trailing garbage
    lambda b: b"XXXX" + b[4:],           # wrong magic
    lambda b: b[:20],                    # header only
    lambda b: b"",                       # empty
])
def test_malformed_payload_is_rejected_with_codec_error(mangle):
    method = _method()
    model = build_run_model(method.settings)
    strategy = method.server(model)
    _, good = read_payload(method.client().send(model, RecordDict()))
    content = RecordDict({PAYLOAD_RECORD: pack(strategy.model_codec.stype, mangle(good))})
    with pytest.raises(CodecError):
        strategy.decode_up(1, 7, content)


def test_payload_of_another_codec_version_is_rejected():
    method = _method()
    strategy = method.server(build_run_model(method.settings))
    content = RecordDict({PAYLOAD_RECORD: pack("fedsqueeze/dense@999", b"\0" * 10)})
    with pytest.raises(CodecError, match="does not match expected"):
        strategy.decode_up(1, 7, content)


def test_missing_payload_record_is_a_codec_error():
    method = _method()
    strategy = method.server(build_run_model(method.settings))
    with pytest.raises(CodecError, match="no 'payload'"):
        strategy.decode_up(1, 7, RecordDict({"other": ArrayRecord()}))


@pytest.mark.parametrize("bits", [8, 4])
def test_uniform_b_bit_model_values_travel_as_quant_payloads_within_their_step(bits):
    from fedsqueeze.codecs import get_codec

    method = _method(f"q{bits}")
    model = build_run_model(method.settings)
    strategy, client = method.server(model), method.client()
    arrays = model_arrays(model)
    content = strategy.encode_down(1, 7, arrays)
    stype, payload = read_payload(content)
    assert stype == get_codec("quant").stype
    size = len(payload)
    n = sum(a.size for a in arrays.values())
    assert size <= n * bits / 8 + 64 * len(arrays) + 1024  # b bits per value at most
    fresh = build_run_model(RunSettings(seed=123))
    client.receive(content, RecordDict(), fresh)
    for (key, a), b in zip(arrays.items(), model_arrays(fresh).values()):
        step = (a.max() - a.min()) / (2 ** bits - 1)
        assert np.abs(a - b).max() <= step / 2 + 1e-6, key


def test_an_unknown_model_value_format_is_refused():
    from fedsqueeze.strategies.settings import ConfigError

    with pytest.raises(ConfigError, match="fedavg.dtype"):
        _method("q9")


def test_the_same_global_model_is_encoded_once_for_every_node_of_a_round():
    method = _method()
    model = build_run_model(method.settings)
    strategy = method.server(model)
    arrays = model_arrays(model)
    first, second = (strategy.encode_down(1, node, arrays) for node in (7, 8))
    assert first is not second   # each message gets its own content (the core adds config)
    assert first[PAYLOAD_RECORD] is second[PAYLOAD_RECORD]
    changed = dict(arrays)
    changed[next(iter(changed))] = changed[next(iter(changed))] + 1.0
    third = strategy.encode_down(2, 7, changed)
    assert third[PAYLOAD_RECORD] is not first[PAYLOAD_RECORD]
    assert read_payload(third) != read_payload(first)
