"""normclip: two exchanges per round (update norms, then clipped models), each metered as its
own phase, with failures and min-nodes handled per exchange."""

from __future__ import annotations

import numpy as np
import pytest

from fedsqueeze.deploy.inprocess import Federation
from fedsqueeze.strategies.state import load_array_list


def federation(tmp_path, clients=4, **run) -> Federation:
    return Federation({"method": "normclip", "num-server-rounds": 3, "num-partitions": 60,
                       "min-nodes": 2, **run}, clients=clients, results_dir=tmp_path)


def test_each_round_runs_both_exchanges_and_meters_them_apart(tmp_path):
    fed = federation(tmp_path)
    for row in fed.run(2):
        ex = row["exchanges"]
        assert list(ex) == ["norms", "train"]
        for key in ("payload_up", "payload_down", "message_up", "message_down"):
            assert row[key] == ex["norms"][key] + ex["train"][key]
        model_bytes = 4 * 118_282
        assert ex["norms"]["payload_down"] > 4 * model_bytes   # the model, to each client
        assert ex["norms"]["payload_up"] == 0                   # norms only: metrics
        assert ex["norms"]["message_up"] < 4 * 2_000
        assert ex["train"]["payload_down"] == 0                 # the bound only
        assert ex["train"]["payload_up"] > 4 * model_bytes
        assert row["failed_replies"] == 0 and row["clip_bound"] > 0


def test_the_bound_is_the_median_norm_and_larger_updates_are_scaled_to_it(tmp_path):
    fed = federation(tmp_path, **{"lr": 0.05})
    row = fed.run_round()
    norms = fed.strategy.norms
    assert row["clip_bound"] == pytest.approx(float(np.median(list(norms.values()))))
    assert row["clipped"] == sum(n > row["clip_bound"] for n in norms.values())
    for p, norm in norms.items():
        (received, local), _ = load_array_list(fed.state_of(p), "normclip.round")
        assert np.linalg.norm(local - received) == pytest.approx(norm, rel=1e-5)
    scales = {int(p): c["clip_scale"] for p, c in row["per_client"].items()}
    for p, norm in norms.items():
        expected = min(1.0, row["clip_bound"] / norm)
        assert scales[p] == pytest.approx(expected)


def test_a_client_failing_the_first_exchange_is_left_out_of_the_second(tmp_path):
    fed = federation(tmp_path)
    calls = []

    def tamper(reply):
        calls.append((reply.metadata.src_node_id, reply.metadata.group_id))
        if reply.metadata.src_node_id == fed.grid.node_of(1) and \
                reply.metadata.group_id.endswith(":norms"):
            return None   # lost: no reply in exchange 1
        return reply

    fed.grid.tamper = tamper
    row = fed.run_round()
    assert [(f["partition_id"], f["exchange"]) for f in row["failures"]] == [(1, "norms")]
    trained = [n for n, g in calls if g.endswith(":train")]
    assert fed.grid.node_of(1) not in trained and len(trained) == 3
    assert not row["skipped"]


def test_too_few_answers_in_the_first_exchange_fail_the_round_there(tmp_path):
    fed = federation(tmp_path, clients=3, **{"min-nodes": 3})
    fed.grid.fail = {0}
    with pytest.raises(RuntimeError, match="2 of 3 replies succeeded in exchange 'norms'"):
        fed.run_round()


def test_with_skip_the_round_is_written_and_the_model_kept(tmp_path):
    fed = federation(tmp_path, clients=3, **{"min-nodes": 3, "on-too-few-replies": "skip"})
    before = {k: fed.arrays[k].numpy().copy() for k in fed.arrays.keys()}
    fed.grid.fail = {0}
    row = fed.run_round()
    assert row["skipped"] and row["failed_replies"] == 1
    assert "train" not in row["exchanges"]
    assert all(np.array_equal(fed.arrays[k].numpy(), v) for k, v in before.items())

