"""`Compressed` with a versioned downlink (an update channel both ways) in fedsqueeze's own
app: synced clients get the coded change of the broadcast model and hold it bit for bit as the
server does; others get it dense; a stale copy is refused and resynced; a run config that puts
channels on a method that codes its own messages is refused."""

from __future__ import annotations

import numpy as np
import pytest

from fedsqueeze.deploy.inprocess import Federation
from fedsqueeze.strategies.mods import HELD
from fedsqueeze.strategies.state import load_array_list, save_array_list
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
    fed = _federation(tmp_path, "topk-ef", **{"fraction-train": 0.67})
    full = 0
    for _ in range(3):
        row = fed.run_round()
        full += row["down_full"]
        assert any(_held(fed, p) is not None for p in range(3))
    assert full > 3  # beyond round 1, clients that sat a round out were sent the model

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
