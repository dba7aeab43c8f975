"""GWPF: the freeze rule (intended and the reference's aliasing), thaw quorum and counters,
tau halving, APF unfreezing, and the protocol: frozen coordinates never overwritten on a
client, identical masks on every side, stale payloads rejected."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Message

from fedsqueeze.codecs import CodecError, encode_masked
from fedsqueeze.deploy.inprocess import Federation, copy_recorddict
from fedsqueeze.strategies.methods.gwpf import (
    STATE,
    VALUES,
    FreezeState,
    GWPFConfig,
    esr,
    thaw_counters,
    version_of,
)
from fedsqueeze.strategies.payload import pack
from fedsqueeze.strategies.state import load_array_list

FREEZING = {"method": "gwpf", "num-partitions": 60, "min-nodes": 2, "num-server-rounds": 20,
            "gwpf.tau-freeze": 0.9, "gwpf.thaw-quorum": 2, "gwpf.local-steps": 3}


def _feed(values: list[float], start: float, **config) -> FreezeState:
    """One coordinate's freeze state after syncs to `values` (it stays tested while active)."""
    state = FreezeState.start(np.array([start], np.float32), tau=0.5)
    for value in values:
        if state.active[0]:
            state.freeze_test(np.array([value], np.float32), state.active.copy(),
                              GWPFConfig(**config))
    return state


def test_a_coordinate_whose_change_keeps_flipping_freezes_and_a_drifting_one_does_not():
    flipping = [5.0 + 0.01 * (-1) ** k for k in range(6)]  # large value, change flips sign
    drifting = [-0.02 + 0.005 * k for k in range(8)]        # crosses zero, change steady
    assert not _feed(flipping, 5.0).active[0]
    assert _feed(drifting, -0.025).active[0]
    # the reference's aliasing (EMAs of values) gets both backwards
    assert _feed(flipping, 5.0, value_ema_compat=True).active[0]
    assert not _feed(drifting, -0.025, value_ema_compat=True).active[0]


def test_esr_is_one_for_a_steady_move_and_small_for_a_flipping_one():
    m, v = np.zeros(2, np.float32), np.zeros(2, np.float32)
    from fedsqueeze.strategies.methods.gwpf import ema
    for k in range(10):
        ema(m, v, np.array([0.1, 0.1 * (-1) ** k], np.float32), 0.99)
    ratio = esr(m, v)
    assert ratio[0] == pytest.approx(1.0, abs=1e-5) and ratio[1] < 0.1


def test_thaw_counters_rise_on_a_quorum_and_halve_otherwise():
    l2 = np.array([0, 1, 3, 4])
    votes = np.array([2, 1, 2, 0])
    assert thaw_counters(l2, votes, quorum=2).tolist() == [1, 0, 4, 2]
    assert thaw_counters(l2, votes, quorum=1).tolist() == [1, 2, 4, 2]


def test_tau_halves_when_more_than_max_frozen_is_frozen():
    state = FreezeState.start(np.zeros(10, np.float32), tau=0.5)
    config = GWPFConfig(max_frozen=0.5)
    flips = np.arange(10) < 6  # 6 of 10 flip (frozen), 4 drift one way (active)
    state.freeze_test(np.ones(10, np.float32), state.active.copy(), config)
    state.freeze_test(np.where(flips, -1.0, 2.0).astype(np.float32), state.active.copy(), config)
    assert (~state.active).sum() == 6 and state.tau == 0.25


def test_apf_unfreezes_after_the_period_and_adapts_it():
    config = GWPFConfig(unfreeze="apf")
    state = FreezeState.start(np.zeros(1, np.float32), tau=0.5)
    for value in (1.0, -1.0):  # flips: stable in the ESR sense -> frozen for 1 round
        state.freeze_test(np.array([value], np.float32), state.active.copy(), config)
    assert not state.active[0] and state.period[0] == 1 and state.frozen_for[0] == 1
    state.freeze_test(np.array([0.0], np.float32), np.zeros(1, bool), config)  # not tested
    assert state.active[0]                       # the period ran out
    state.freeze_test(np.array([1.0], np.float32), state.active.copy(), config)
    assert not state.active[0] and state.period[0] == 2  # frozen again, one round longer
    never = FreezeState.start(np.zeros(1, np.float32), tau=0.5)
    for value in (1.0, -1.0):
        never.freeze_test(np.array([value], np.float32), never.active.copy(), GWPFConfig())
    for _ in range(3):
        never.freeze_test(np.array([0.0], np.float32), never.active.copy(), GWPFConfig())
    assert not never.active[0]  # the reference: frozen for good


@pytest.fixture(scope="module")
def freezing_run(tmp_path_factory):
    """20 rounds of gwpf with freezing settings; per round, every client's stored state."""
    fed = Federation(FREEZING, clients=3, results_dir=tmp_path_factory.mktemp("gwpf"))
    rounds = []
    for _ in range(20):
        row = fed.run_round()
        states = {p: load_array_list(copy_recorddict(fed.state_of(p)), STATE) for p in range(3)}
        rounds.append((row, fed.strategy.last, states))
    return fed, rounds


def test_server_and_every_client_hold_the_same_mask_after_every_round(freezing_run):
    _, rounds = freezing_run
    for row, last, states in rounds:
        assert row["failed_replies"] == 0, row["failures"]
        for (_x, active, synced), meta in states.values():
            assert np.array_equal(active.astype(bool), last.old_active)
            assert np.array_equal(synced.astype(bool), last.synced)
            assert meta["version"] == last.base
    assert rounds[-1][0]["gwpf_frozen_fraction"] > 0.05  # the test exercised freezing
    assert sum(r["gwpf_thawed"] for r, _, _ in rounds) > 0
    assert all(r["gwpf_down_delta"] == 3 for r, _, _ in rounds[1:])  # no resync needed


def test_a_client_overwrites_only_the_synced_coordinates(freezing_run):
    fed, _ = freezing_run
    strategy, client = fed.strategy, fed.runner.strategy.method.client()
    strategy.begin_round(21, {})
    content = strategy._sync_down(1)
    state = copy_recorddict(fed.state_of(1))
    (before, _, synced), _ = load_array_list(state, STATE)
    after, active, version = client._apply_sync(content, state, before.size)
    synced = synced.astype(bool)
    assert np.array_equal(after[~synced], before[~synced])  # frozen: the client's own values
    assert np.array_equal(after[synced], strategy.last.x_bar[synced])
    assert np.array_equal(active, strategy.state.active)
    assert version == version_of(strategy.state.active, strategy.epoch)


def test_a_delta_against_a_version_the_client_does_not_hold_is_refused(freezing_run):
    fed, _ = freezing_run
    strategy, client = fed.strategy, fed.runner.strategy.method.client()
    strategy.begin_round(21, {})
    content = strategy._sync_down(1)
    content.config_records["gwpf"]["base"] = "0" * 16
    state = copy_recorddict(fed.state_of(1))
    saved = load_array_list(state, STATE)
    with pytest.raises(CodecError, match="needs a full transfer"):
        client._apply_sync(content, state, saved[0][0].size)
    assert all(np.array_equal(a, b) for a, b in zip(load_array_list(state, STATE)[0],
                                                    saved[0]))


def test_values_coded_against_another_mask_are_rejected_and_the_run_goes_on(tmp_path):
    fed = Federation({**FREEZING, "num-server-rounds": 3}, clients=3, results_dir=tmp_path)
    fed.run_round()
    victim = fed.grid.node_of(1)

    def stale(reply: Message) -> Message:
        if reply.metadata.src_node_id != victim or not reply.metadata.group_id.endswith("train"):
            return reply
        content = copy_recorddict(reply.content)
        n = fed.strategy.n
        wrong = np.ones(n, bool)
        wrong[:10] = False
        content[VALUES] = pack("fedsqueeze/masked@1", encode_masked(
            [np.zeros(n, np.float32)], [wrong], values="fp32"))
        return _with(reply, content)

    fed.grid.tamper = stale
    x_before = fed.strategy.state.x_last.copy()
    row = fed.run_round()
    assert [f["partition_id"] for f in row["failures"]] == [1]
    assert "mask digest mismatch" in row["failures"][0]["reason"]
    assert not row["skipped"] and not np.array_equal(fed.strategy.state.x_last, x_before)
    fed.grid.tamper = None
    after = fed.run_round()
    assert after["failed_replies"] == 0 and after["gwpf_resyncs"] == 1  # full transfer


def _with(reply: Message, content) -> Message:
    import copy

    from flwr.app.message.message import make_message
    return make_message(metadata=copy.copy(reply.metadata), content=content)


@pytest.mark.parametrize("timing", ["exchange", "lagged"])
def test_both_thaw_timings_learn_and_say_what_they_sent(tmp_path, timing):
    fed = Federation({**FREEZING, "num-server-rounds": 6, "gwpf.thaw-timing": timing},
                     clients=3, results_dir=tmp_path)
    rows = fed.run(6)
    assert rows[-1]["accuracy"] > rows[0]["accuracy"]
    assert ("exchanges" in rows[0]) == (timing == "exchange")
    for row in rows:
        assert row["gwpf_values_up"] <= 3 * fed.strategy.n
        assert row["failed_replies"] == 0


def test_each_clients_own_model_is_evaluated_beside_the_global_one(tmp_path):
    fed = Federation({**FREEZING, "num-server-rounds": 4, "local-test-fraction": 0.2,
                      "local-eval-every": 2}, clients=3, results_dir=tmp_path)
    rows = fed.run(4)
    for row in (rows[1], rows[3]):
        assert row["local_evaluations"] == 3
        assert 0 <= row["accuracy_local_own_min"] <= row["accuracy_local_own"] <= 1
    assert rows[3]["gwpf_frozen_fraction"] > 0
