"""`Compressed` with a versioned downlink (an update channel both ways) in fedsqueeze's own
app: synced clients get the coded change of the broadcast model and hold it bit for bit as the
server does; others get it dense; a stale copy is refused and resynced; a run config that puts
channels on a method that codes its own messages is refused."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord, RecordDict

from fedsqueeze.codecs import CodecError
from fedsqueeze.deploy.inprocess import Federation
from fedsqueeze.strategies import header as h
from fedsqueeze.strategies.channels.dense import Dense
from fedsqueeze.strategies.mods import HELD, _downlink
from fedsqueeze.strategies.state import digest, load_array_list, save_array_list
from fedsqueeze.strategies.tensors import flatten

SETTINGS = {"partitioner": "iid", "model": "fc2", "min-nodes": 2, "eval-every": 3,
            "num-server-rounds": 3}
CHANNELS = {"topk-ef": {"topk-ef.sparsity": 0.9}, "qsgd": {"qsgd.bits": 4}}


def _federation(tmp_path, channel, **keys):
    return Federation({**SETTINGS, "method": "fedavg", "uplink": channel, "downlink": channel,
                       **CHANNELS[channel], **keys},
                      clients=3, results_dir=tmp_path, run_name=channel)


def _held(fed, partition):
    saved = load_array_list(fed.state_of(partition), HELD)
    return None if saved is None else flatten(saved[0])


def _broadcast(fed):
    return flatten(fed.strategy.broadcast.model)


def _synced_rounds(fed, rounds):
    """The rows of `rounds` rounds, each checked: no failed reply, and every client that took
    part holds the server's broadcast model bit for bit."""
    for _ in range(rounds):
        row = fed.run_round()
        assert row["failed_replies"] == 0, row["failures"]
        for p in row["clients"]:
            assert np.array_equal(_held(fed, p), _broadcast(fed))
        yield row


@pytest.mark.parametrize("channel", CHANNELS)
def test_synced_clients_get_the_change_and_hold_the_servers_broadcast_bit_for_bit(
        tmp_path, channel):
    fed = _federation(tmp_path, channel)
    dense_bytes = 3 * 4 * 118_282
    for t in range(1, 4):
        row = fed.run_round()
        for p in range(3):
            assert np.array_equal(_held(fed, p), _broadcast(fed))
        if t == 1:
            assert (row["down_full"], row["down_change"]) == (3, 0)
        else:
            assert (row["down_full"], row["down_change"]) == (0, 3)
            assert row["payload_down"] < 0.4 * dense_bytes
        assert row["down_resyncs"] == 0 and row["failed_replies"] == 0
    assert row["accuracy_broadcast"] is not None and row["accuracy"] is not None


def test_a_client_that_missed_rounds_gets_the_model_and_a_stale_copy_resyncs(tmp_path):
    fed = _federation(tmp_path, "topk-ef", **{"fraction-train": 0.67, "catchup-rounds": 0})
    full = 0
    for _ in range(3):
        row = fed.run_round()
        full += row["down_full"]
        assert any(_held(fed, p) is not None for p in range(3))
    assert full > 3  # without catch-up, clients that sat a round out were sent the model

    fed2 = _federation(tmp_path / "stale", "topk-ef", **{"num-server-rounds": 4,
                                                         "eval-every": 4})
    fed2.run(2)
    state = fed2.state_of(1)
    held = load_array_list(state, HELD)[0]
    held[0][0] += 1.0  # the client's copy no longer matches the digest the server expects
    save_array_list(state, HELD, held, version="0" * 16)
    row = fed2.run_round()
    assert row["failed_replies"] == 1 and row["down_change"] == 3
    assert "holds" in row["failures"][0]["reason"]
    row = fed2.run_round()
    assert row["down_full"] == 1 and row["down_resyncs"] == 1
    assert row["failed_replies"] == 0
    assert np.array_equal(_held(fed2, 1), _broadcast(fed2))


def test_channels_are_validated(tmp_path):
    from fedsqueeze.strategies.settings import ConfigError

    with pytest.raises(ConfigError, match="qsgd.bits"):
        _federation(tmp_path, "qsgd", **{"qsgd.bits": 1})
    with pytest.raises(ConfigError, match="'uplink' = 'sparse'"):
        Federation({**SETTINGS, "uplink": "sparse"}, clients=2, results_dir=tmp_path)
    with pytest.raises(ConfigError, match="codes its own messages"):
        Federation({**SETTINGS, "method": "gwpf", "uplink": "topk-ef"}, clients=2,
                   results_dir=tmp_path)
    with pytest.raises(ConfigError, match="codes both directions"):
        Federation({**SETTINGS, "method": "resfed", "uplink": "topk-ef"}, clients=2,
                   results_dir=tmp_path)


@pytest.mark.parametrize("channel", ["topk-ef", "qsgd", "sign-ef", "ternary-ef"])
def test_a_client_that_missed_rounds_catches_up_to_the_servers_broadcast_bit_for_bit(
        tmp_path, channel):
    """Half the clients per round: every client that takes part holds, after the round, the
    server's broadcast model exactly, whether it was synced, missed rounds (a catch-up: the
    values that changed since its version, or the changes since replayed) or is new (the
    full model)."""
    fed = Federation({**SETTINGS, "method": "fedavg", "uplink": channel, "downlink": channel,
                      "fraction-train": 0.5, "num-server-rounds": 8, "eval-every": 8},
                     clients=4, results_dir=tmp_path)
    caught_up = replayed = 0
    for row in _synced_rounds(fed, 8):
        caught_up += row["down_catchup"]
        replayed += row["down_catchup_replay"]
    assert caught_up > 0
    if channel in ("qsgd", "sign-ef"):  # each change touches every coordinate: replayed
        assert replayed == caught_up
    if channel == "topk-ef":  # sparse fp32 changes: the values that changed are smaller
        assert replayed == 0


def test_catching_up_costs_less_than_the_model_and_zero_rounds_turns_it_off(tmp_path):
    def run(rounds):
        fed = Federation({**SETTINGS, "method": "fedavg", "uplink": "topk-ef",
                          "downlink": "topk-ef", "topk-ef.sparsity": 0.99,
                          "fraction-train": 0.5, "num-server-rounds": 6, "eval-every": 6,
                          "catchup-rounds": rounds}, clients=4, results_dir=tmp_path / str(rounds))
        return fed.run(6)

    on, off = run(16), run(0)
    assert sum(r["down_catchup"] for r in off) == 0
    assert sum(r["down_catchup"] for r in on) > 0
    assert [r["accuracy"] for r in on] == [r["accuracy"] for r in off]  # same models
    assert sum(r["payload_down"] for r in on) < 0.7 * sum(r["payload_down"] for r in off)


def test_the_history_stays_within_its_horizon_over_a_long_run(tmp_path):
    fed = Federation({**SETTINGS, "method": "fedavg", "uplink": "topk-ef",
                      "downlink": "topk-ef", "fraction-train": 0.25, "num-server-rounds": 12,
                      "eval-every": 12, "catchup-rounds": 2}, clients=8, results_dir=tmp_path)
    history = fed.strategy.history
    full_after_a_long_absence = 0
    for _ in range(12):
        row = fed.run_round()
        assert len(history.changes) <= 2 and len(history.versions) <= 3
        assert len(history.payloads) <= 2
        assert row["down_catchup_skipped"] <= row["down_catchup"] * 1  # at most 1 missed
        full_after_a_long_absence += row["down_full"]
        for p in row["clients"]:
            assert np.array_equal(_held(fed, p), _broadcast(fed))
    assert full_after_a_long_absence > 8  # beyond first contacts: absent longer than 2


def test_the_broadcast_starts_in_the_values_format_and_newcomers_start_from_it(tmp_path):
    """Top-k with q8 values: the first full transfer is the model in q8 (a byte a weight, not
    four); a client that first takes part later gets that start plus the catch-up from it,
    and holds the server's broadcast model bit for bit; with fp32 values nothing changes."""
    fed = Federation({**SETTINGS, "method": "fedavg", "uplink": "topk-ef",
                      "downlink": "topk-ef", "topk-ef.values": "q8", "fraction-train": 0.34,
                      "num-server-rounds": 8, "eval-every": 8, "seed": 1},
                     clients=6, results_dir=tmp_path)
    n = 118_282
    first = fed.run_round()
    assert first["down_full_from_start"] == first["down_full"] == 2
    assert first["payload_down"] < 2 * 1.05 * n  # q8: about n bytes each, fp32 would be 4n
    late = 0
    for row in _synced_rounds(fed, 7):
        late += row["down_full_from_start"]
        assert row["down_full_from_start"] == row["down_full"]  # never the fp32 model
    assert late > 0


def test_a_start_model_that_does_not_decode_to_its_digest_is_refused():
    arrays = [np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)]
    coded = Dense("q8").encode(arrays)
    layout = h.Layout(("w",), ("w",), ((3, 4),))
    content = RecordDict({h.start_name(k): r for k, r in coded.records.items()})
    good = digest(*coded.delivered()).hex()
    for base, ok in ((good, True), (digest(*arrays).hex(), False)):
        config = ConfigRecord({h.FORM: h.MODEL, h.START: "dense:dtype=q8", h.BASE: base,
                               **layout.to_config()})
        state = RecordDict()
        if ok:
            _, got, _ = _downlink(content, config, "arrays", state)
            assert np.array_equal(got[0], coded.delivered()[0])
        else:
            with pytest.raises(CodecError, match="another model"):
                _downlink(content, config, "arrays", state)


def test_a_compressed_message_and_its_reply_are_three_flower_objects_each(channel_loop):
    """Flower moves a message one object per call: a compressed instruction and its reply are
    each the message, its record dict and one record (`folding.py`), and still decode."""
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    from fedsqueeze.strategies.channels.topk_ef import TopKEF

    loop = channel_loop(TopKEF(), TopKEF())
    loop.run_round()
    messages = list(loop.strategy.configure_train(2, loop.arrays, ConfigRecord(), loop.grid))
    replies = list(loop.grid.send_and_receive(messages))
    assert [len(get_all_nested_objects(m)) for m in messages + replies] == [3, 3]
    arrays, _ = loop.strategy.aggregate_train(2, replies)
    assert arrays is not None and not loop.strategy.failures
