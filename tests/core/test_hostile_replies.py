"""Hostile and broken replies are rejected one by one, counted with their reason, never
aggregated and never fatal - for every registered method (issue 13, part 2).

Each case runs a 3-client in-process federation (min-nodes 2): round 1 is clean, round 2
tampers with partition 1's train reply, round 3 is clean again. The round must keep the
two honest replies, name the victim's failure, and leave a finite global model that round 3
trains on with all three clients.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from flwr.app import Message, MetricRecord
from flwr.app.message.message import make_message

from fedsqueeze.deploy.inprocess import Federation, copy_recorddict
from fedsqueeze.strategies.base import TRAIN, absurd_values, all_finite
from fedsqueeze.strategies.payload import METRICS_RECORD
from fedsqueeze.strategies.registry import get_method, method_names
from fedsqueeze.strategies.tensors import from_arrayrecord, to_arrayrecord

VICTIM = 1
BASE = {"num-server-rounds": 3, "num-partitions": 60, "min-nodes": 2}


def _federation(tmp_path, method: str, **overrides) -> Federation:
    return Federation({"method": method, **BASE, **overrides}, clients=3, results_dir=tmp_path)


def _rebuilt(reply: Message, content, **metadata) -> Message:
    """The reply with other content (and metadata fields), as a forging client sends it."""
    copied = copy.copy(reply.metadata)
    copied.__dict__.update({f"_{k}": v for k, v in metadata.items()})
    return make_message(metadata=copied, content=content)


def _identity(reply: Message, partition_id: int) -> Message:
    content = copy_recorddict(reply.content)
    content[METRICS_RECORD] = MetricRecord({**content.metric_records[METRICS_RECORD],
                                            "partition-id": partition_id})
    return _rebuilt(reply, content)


def _other_round(reply: Message) -> Message:
    return _rebuilt(reply, copy_recorddict(reply.content), group_id="1:train")


def _metric(reply: Message, **changes) -> Message:
    content = copy_recorddict(reply.content)
    metrics = dict(content.metric_records[METRICS_RECORD])
    for key, value in changes.items():
        if value is None:
            metrics.pop(key)
        else:
            metrics[key] = value
    content[METRICS_RECORD] = MetricRecord(metrics)
    return _rebuilt(reply, content)


CASES = {
    "num-examples-inflated": (lambda r: _metric(r, **{"num-examples": 10**12}),
                              "differs from the"),
    "num-examples-negative": (lambda r: _metric(r, **{"num-examples": -5}), "positive count"),
    "num-examples-zero": (lambda r: _metric(r, **{"num-examples": 0}), "positive count"),
    "partition-id-of-another": (lambda r: _identity(r, 0), "reports partition-id 0"),
    "extra-metric-key": (lambda r: _metric(r, surprise=1.0), "metric keys differ"),
    "missing-metric-key": (lambda r: _metric(r, **{"fit-seconds": None}), "metric keys differ"),
    "duplicate": (lambda r: [r, _rebuilt(r, copy_recorddict(r.content))], "2 replies"),
    "another-round": (_other_round, "a reply to '1:train'"),
}


def _run_with_tamper(fed: Federation, tamper) -> dict:
    fed.run_round()
    victim = fed.grid.node_of(VICTIM)
    fed.grid.tamper = lambda reply: tamper(reply) \
        if reply.metadata.src_node_id == victim and reply.metadata.group_id.endswith(TRAIN) \
        else reply
    row = fed.run_round()
    fed.grid.tamper = None
    return row


def _check_rejected(fed: Federation, row: dict, reason: str) -> None:
    assert not row["skipped"], row["failures"]
    assert [f["partition_id"] for f in row["failures"]] == [VICTIM], row["failures"]
    assert reason in row["failures"][0]["reason"], row["failures"]
    arrays = from_arrayrecord(fed.arrays)
    assert all(np.isfinite(a).all() and np.abs(a).max() < 1e3 for a in arrays.values())
    after = fed.run_round()  # the run goes on, with the victim back
    assert not after["skipped"] and after["failed_replies"] == 0, after["failures"]
    assert after["accuracy"] > 0.1


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("method", method_names())
def test_a_hostile_reply_is_rejected_counted_and_not_fatal(tmp_path, method, case):
    tamper, reason = CASES[case]
    fed = _federation(tmp_path, method)
    row = _run_with_tamper(fed, tamper)
    _check_rejected(fed, row, reason)


# settings under which the poison reaches the server as sent (resfed's default median
# quantizer maps the 50 poisoned entries to the level of their group, which is harmless)
POISON_CARRIED = {"resfed": {"resfed.quantizer": "fp32"}}
# where the client's own codec already refuses the poison (qsgd: the bucket norm of 1e38
# entries overflows fp32, and the dense codec does not send inf)
REFUSED_BY_THE_CLIENT = {("qsgd", 1e38)}


@pytest.mark.parametrize("value", [1e38, float("nan"), 5e4])
@pytest.mark.parametrize("method", method_names())
def test_a_poisoned_model_is_rejected_for_every_method(tmp_path, monkeypatch, method, value):
    """The victim's client side puts `value` into its model just before coding its reply
    (finite 1e38 would break every client next round; 5e4 is above max-abs-value; NaN is
    refused by the codecs already on the client, and by the server for a forged payload:
    `test_absurd_values_names_what_is_wrong`)."""
    client_class = get_method(method).Client
    original_send = client_class.send
    calls = {"n": 0}

    def poisoned_send(self, model, state):
        calls["n"] += 1
        if calls["n"] == 3 + VICTIM + 1:  # round 2 (3 clients per round), partition VICTIM
            with torch.no_grad():
                next(model.parameters()).view(-1)[:50] = value
        return original_send(self, model, state)

    monkeypatch.setattr(client_class, "send", poisoned_send)
    fed = _federation(tmp_path, method, **POISON_CARRIED.get(method, {}))
    fed.run_round()
    row = fed.run_round()
    refused = np.isnan(value) or (method, value) in REFUSED_BY_THE_CLIENT
    _check_rejected(fed, row, "non-finite" if refused else "rejected: ")


def test_absurd_values_names_what_is_wrong():
    ok = {"w": np.ones(3, np.float32)}
    assert absurd_values(ok, 1e4) is None
    assert "2 non-finite values in 'w'" in absurd_values(
        {"w": np.array([np.nan, np.inf, 1], np.float32)}, 1e4)
    assert "exceeds max-abs-value = 10000" in absurd_values({"w": np.array([2e4])}, 1e4)
    assert absurd_values({"w": np.array([2e4])}, 0) is None  # 0 = no bound
    assert all_finite({"a": [1.0, np.ones(2)], "b": "text"})
    assert not all_finite({"a": [1.0, np.array([np.nan])]})


@pytest.mark.parametrize("method", method_names())
def test_a_reply_from_a_node_the_exchange_was_not_sent_to_is_rejected(tmp_path, method):
    """The round's first exchange (train, or a method's earlier one) gets a genuine reply of
    partition 2 that was never asked for in it."""
    fed = _federation(tmp_path, method)
    fed.run_round()
    strategy, grid = fed.strategy, fed.grid
    exchange = (*strategy.exchanges(2), TRAIN)[0]
    outsider = grid.node_of(2)
    strategy.begin(2, from_arrayrecord(fed.arrays))
    stray = grid.send_and_receive(strategy.configure_exchange(exchange, 2, [outsider]))
    sampled = [grid.node_of(0), grid.node_of(1)]
    replies = list(grid.send_and_receive(strategy.configure_exchange(exchange, 2, sampled)))
    if exchange == TRAIN:
        assert strategy.aggregate_train(2, replies + list(stray))[0] is not None
    else:
        assert strategy.aggregate_exchange(exchange, 2, replies + list(stray)) == sampled
    strategy.end(2)
    assert [(f.node_id, f.reason) for f in strategy.failures] == [
        (outsider, "a reply from a node this exchange was not sent to")]


def test_an_out_of_range_local_evaluation_is_rejected(tmp_path):
    fed = _federation(tmp_path, "fedavg", **{"local-test-fraction": 0.2,
                                             "local-eval-every": 1})
    fed.grid.tamper = lambda reply: _metric(reply, accuracy=2.0) \
        if reply.metadata.group_id.endswith("evaluate") \
        and reply.metadata.src_node_id == fed.grid.node_of(VICTIM) else reply
    row = fed.run_round()
    assert row["local_evaluations"] == 2 and row["failed_local_evaluations"] == 1
    assert 0 <= row["accuracy_local"] <= 1


def _poison_gwpf(strategy) -> None:
    """gwpf sends the values it keeps itself (the last sync), not the round's global arrays."""
    strategy.last.x_bar[:50] = 3e38
    strategy.state.x_last[:50] = 3e38


# methods whose downlink is built from their own state, and how to poison it
POISON_STATE = {"gwpf": _poison_gwpf}


@pytest.mark.parametrize("method", method_names())
def test_clients_reject_an_absurd_downlink_with_a_clear_error(tmp_path, method):
    fed = _federation(tmp_path, method, **{"on-too-few-replies": "skip"})
    fed.run_round()
    arrays = from_arrayrecord(fed.arrays)
    first = next(iter(arrays))
    arrays[first] = np.full_like(arrays[first], 3e38)
    fed.arrays = to_arrayrecord(arrays)
    POISON_STATE.get(method, lambda strategy: None)(fed.strategy)
    row = fed.run_round()
    assert row["skipped"] and row["failed_replies"] == 3
    assert all("downlink rejected" in f["reason"] for f in row["failures"]), row["failures"]
