"""The compressed downlink of update methods (topk-ef, qsgd): synced clients get the coded
change of the broadcast model and hold it bit for bit as the server does; others get it
dense; a stale copy is refused and resynced."""

from __future__ import annotations

import numpy as np
import pytest

from fedsqueeze.deploy.inprocess import Federation
from fedsqueeze.strategies.state import load_array_list
from fedsqueeze.strategies.updates import HELD_RECORD

SETTINGS = {"partitioner": "iid", "model": "fc2", "min-nodes": 2, "eval-every": 3,
            "num-server-rounds": 3}
METHODS = {"topk-ef": {"topk-ef.sparsity": 0.9}, "qsgd": {"qsgd.bits": 4}}


def _federation(tmp_path, method, **keys):
    return Federation({**SETTINGS, "method": method, **METHODS[method],
                       f"{method}.downlink": "compressed", **keys},
                      clients=3, results_dir=tmp_path, run_name=method)


def _held(fed, partition):
    saved = load_array_list(fed.state_of(partition), HELD_RECORD)
    return None if saved is None else saved[0][0]


@pytest.mark.parametrize("method", METHODS)
def test_synced_clients_get_the_change_and_hold_the_servers_broadcast_bit_for_bit(
        tmp_path, method):
    fed = _federation(tmp_path, method)
    dense_bytes = 3 * 4 * sum(a.size for a in fed.strategy.round_arrays.values())
    for t in range(1, 4):
        row = fed.run_round()
        for p in range(3):
            assert np.array_equal(_held(fed, p), fed.strategy.broadcast.model)
        if t == 1:
            assert (row["update_down_full"], row["update_down_change"]) == (3, 0)
        else:
            assert (row["update_down_full"], row["update_down_change"]) == (0, 3)
            assert row["payload_down"] < 0.4 * dense_bytes
        assert row["update_resyncs"] == 0 and row["failed_replies"] == 0
    assert row["accuracy_broadcast"] is not None and row["accuracy"] is not None


def test_a_client_that_missed_rounds_gets_the_model_and_a_stale_copy_resyncs(tmp_path):
    fed = _federation(tmp_path, "topk-ef", **{"fraction-train": 0.67})
    full = 0
    for _ in range(3):
        row = fed.run_round()
        full += row["update_down_full"]
        trained = [p for p in range(3) if _held(fed, p) is not None]
        assert trained
    assert full > 3  # beyond round 1, clients that sat a round out were sent the model
    for p in range(3):  # everyone who holds a model holds one the server sent at some round
        assert _held(fed, p) is None or np.all(np.isfinite(_held(fed, p)))

    fed2 = _federation(tmp_path / "stale", "topk-ef", **{"num-server-rounds": 4,
                                                         "eval-every": 4})
    fed2.run(2)
    state = fed2.state_of(1)
    held = load_array_list(state, HELD_RECORD)[0][0]
    held[0] += 1.0  # the client's copy no longer matches the digest the server expects
    from fedsqueeze.strategies.state import save_array_list
    save_array_list(state, HELD_RECORD, [held])
    row = fed2.run_round()
    assert row["failed_replies"] == 1 and row["update_down_change"] == 3
    row = fed2.run_round()
    assert row["update_down_full"] == 1 and row["update_resyncs"] == 1
    assert row["failed_replies"] == 0
    assert np.array_equal(_held(fed2, 1), fed2.strategy.broadcast.model)


def test_the_downlink_key_is_validated():
    from fedsqueeze.strategies.registry import get_method
    from fedsqueeze.strategies.settings import ConfigError, RunSettings

    with pytest.raises(ConfigError, match="qsgd.downlink"):
        get_method("qsgd")(RunSettings(), {"qsgd.downlink": "sparse"})
