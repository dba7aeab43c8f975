"""FedSparsify: schedule (Eq. 1), pruning operator, majority vote, mask enforcement, wire."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import RecordDict

from fedsqueeze.codecs import CodecError, decode_sparse_parts
from fedsqueeze.deploy.inprocess import Federation
from fedsqueeze.strategies.methods.fedsparsify import (
    FedSparsifyConfig,
    magnitude_threshold,
    majority_vote_merge,
    prune_global,
    vote_threshold,
)
from fedsqueeze.strategies.payload import read_payload
from fedsqueeze.strategies.registry import get_method
from fedsqueeze.strategies.run_model import build_run_model
from fedsqueeze.strategies.settings import ConfigError, RunSettings
from fedsqueeze.strategies.tensors import model_arrays
from fedsqueeze.strategies.training import ClientData


def schedule(T=200, **keys):
    return get_method("fedsparsify")(RunSettings(num_server_rounds=T), keys).schedule


# -- schedule --------------------------------------------------------------------------------
@pytest.mark.parametrize("t, expected", [(2, 0.0135), (10, 0.1167), (50, 0.5146),
                                         (100, 0.7858), (150, 0.8857), (200, 0.9000)])
def test_schedule_matches_the_spec_values(t, expected):
    assert schedule().sparsity(t) == pytest.approx(expected, abs=5e-5)


@pytest.mark.parametrize("t, expected", [(2, 0.0135), (3, 0.0135), (4, 0.0401), (5, 0.0401)])
def test_schedule_with_frequency_two(t, expected):
    assert schedule(**{"fedsparsify.frequency": 2}).sparsity(t) == pytest.approx(expected,
                                                                                 abs=5e-5)


def test_schedule_prunes_only_after_t0_and_stays_at_sf_past_T():
    s = schedule(T=10)
    assert not s.prunes(1) and s.prunes(2) and s.sparsity(1) == 0.0
    assert s.sparsity(10) == pytest.approx(0.9) and s.sparsity(25) == pytest.approx(0.9)
    values = [s.sparsity(t) for t in range(1, 11)]
    assert values == sorted(values)


def test_total_rounds_default_to_num_server_rounds_and_can_be_set():
    assert schedule(T=30).T == 30
    assert schedule(T=30, **{"fedsparsify.total-rounds": 200}).T == 200


@pytest.mark.parametrize("keys, fragment", [
    ({"fedsparsify.final-sparsity": 1.0}, "final-sparsity"),
    ({"fedsparsify.final-sparsity": -0.1}, "final-sparsity"),
    ({"fedsparsify.variant": "both"}, "variant"),
    ({"fedsparsify.frequency": 0}, "frequency"),
    ({"fedsparsify.exponent": 0.0}, "exponent"),
    ({"fedsparsify.average": "median"}, "average"),
    ({"fedsparsify.values": "bf8"}, "values"),
    ({"fedsparsify.initial-sparsity": 0.5, "fedsparsify.final-sparsity": 0.4}, "final-sparsity"),
    ({"fedsparsify.start-round": 5, "fedsparsify.total-rounds": 5}, "total-rounds"),
])
def test_bad_values_name_the_key(keys, fragment):
    with pytest.raises(ConfigError, match=fragment):
        schedule(T=200, **keys)


def test_start_round_at_or_beyond_num_server_rounds_is_rejected():
    with pytest.raises(ConfigError, match="num-server-rounds"):
        schedule(T=1)


# -- pruning operator ------------------------------------------------------------------------
def test_one_threshold_across_layers_biases_included():
    w = np.array([[0.1, -0.9], [0.5, 0.05]], np.float32)
    b = np.array([0.01, -0.7], np.float32)          # a bias is pruned like any weight
    out = prune_global([w, b], [True, True], 0.5)   # 6 entries -> threshold at sorted[3]
    assert magnitude_threshold([w, b], 0.5) == pytest.approx(0.5)
    assert out[0].tolist() == [[0, np.float32(-0.9)], [np.float32(0.5), 0]]
    assert out[1].tolist() == [0, np.float32(-0.7)]


def test_zeros_are_counted_so_sparsity_is_absolute_and_monotone():
    a = np.array([0, 0, 0, 0, 0.4, 0.3, 0.2, 0.1], np.float32)   # already 50 % sparse
    assert np.count_nonzero(prune_global([a], [True], 0.5)[0]) == 4   # nothing more to do
    out = prune_global([a], [True], 0.75)[0]
    assert out.tolist() == [0, 0, 0, 0, np.float32(0.4), np.float32(0.3), 0, 0]
    again = prune_global([out], [True], 0.6)[0]   # a lower target never revives a weight
    assert np.array_equal(again, out)


def test_ties_at_the_threshold_are_kept():
    a = np.array([0.1, 0.2, 0.2, 0.2, 0.3], np.float32)
    out = prune_global([a], [True], 0.4)[0]   # threshold = sorted[2] = 0.2, all three kept
    assert np.count_nonzero(out) == 4


def test_non_trainable_tensors_are_never_pruned():
    stats = np.array([1e-6, 2e-6], np.float32)
    w = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
    out = prune_global([w, stats], [True, False], 0.5)
    assert np.array_equal(out[1], stats) and np.count_nonzero(out[0]) == 2


# -- majority vote -------------------------------------------------------------------------------
@pytest.mark.parametrize("n, need", [(10, 5), (3, 1), (4, 2), (1, 0)])
def test_vote_threshold_is_floor_half(n, need):
    assert vote_threshold(n) == need


def _vote(n, votes_for_entry, average="all"):
    """n clients with value k+1 each; entry j kept by the first votes_for_entry[j] clients."""
    values = [[np.full(len(votes_for_entry), k + 1.0, np.float32)] for k in range(n)]
    masks = [[np.array([k < v for v in votes_for_entry])] for k in range(n)]
    values = [[np.where(m[0], v[0], 0)] for v, m in zip(values, masks)]
    return majority_vote_merge(values, masks, [1.0] * n, [True], average)[0]


def test_ten_clients_need_five_votes():
    out = _vote(10, [4, 5, 10])
    assert out[0] == 0 and out[1] != 0 and out[2] != 0
    assert out[1] == pytest.approx((1 + 2 + 3 + 4 + 5) / 10)   # zeros of pruners included
    assert out[2] == pytest.approx(5.5)


def test_three_clients_need_one_vote_a_union():
    out = _vote(3, [0, 1, 2, 3])
    assert out[0] == 0 and all(out[1:] != 0)


def test_keepers_option_averages_only_over_clients_that_kept_it():
    out = _vote(10, [5], average="keepers")
    assert out[0] == pytest.approx(3.0)   # (1+..+5)/5


def test_vote_is_by_raw_counts_and_average_is_sample_weighted():
    values = [[np.array([2.0], np.float32)], [np.array([0.0], np.float32)],
              [np.array([0.0], np.float32)], [np.array([0.0], np.float32)]]
    masks = [[np.array([True])], [np.array([False])], [np.array([False])], [np.array([False])]]
    assert majority_vote_merge(values, masks, [100, 1, 1, 1], [True])[0][0] == 0   # 1 < 2
    masks[1] = [np.array([True])]
    assert majority_vote_merge(values, masks, [3, 1, 0, 0], [True])[0][0] == \
        pytest.approx(1.5)


# -- client side: mask enforcement -----------------------------------------------------------
def _method(**keys):
    settings = RunSettings(num_server_rounds=10, momentum=0.9, weight_decay=1e-3, lr=0.05,
                           local_epochs=2, batch_size=16, seed=3)
    return get_method("fedsparsify")(settings, keys)


def _data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return ClientData(0, torch.rand(n, 1, 28, 28, generator=g),
                      torch.randint(0, 10, (n,), generator=g))


def _pruned_model(method, sparsity=0.8, strategy=None):
    """A pruned model; `strategy`'s global mask becomes its non-zeros (as after a pruning)."""
    model = build_run_model(RunSettings(seed=5))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)   # no zero biases: the mask is then exactly the non-zeros
    arrays = model_arrays(model)
    pruned = prune_global(list(arrays.values()), [True] * len(arrays), sparsity)
    if strategy is not None:
        strategy.mask = [a != 0 for a in pruned]
    return dict(zip(arrays, pruned))


def _received_pruned(client_round):
    """A client that received a globally pruned model in round 3: (client, model, pruned)."""
    method = _method()
    strategy, client = method.strategy(build_run_model(method.settings)), method.client()
    pruned = _pruned_model(method, strategy=strategy)
    content = strategy.encode_down(3, 7, pruned)
    client.server_round = 3
    model = client_round.receive(client, content, RecordDict(),
                                 build_run_model(RunSettings(seed=99)))
    return client, model, pruned


def test_masked_weights_stay_exactly_zero_through_training_with_momentum(client_round):
    client, model, pruned = _received_pruned(client_round)
    client_round.train(client, model, _data(), seed=5)
    trained = model_arrays(model)
    changed = 0
    for key, before in pruned.items():
        after = trained[key]
        assert np.all(after[before == 0] == 0), key
        changed += int(np.sum(after[before != 0] != before[before != 0]))
    assert changed > 0   # it did train (SGD momentum 0.9 + weight decay, 2 epochs)


def test_masked_gradients_keep_momentum_off_pruned_entries(client_round):
    """Without the after-step re-masking, the gradient hooks alone keep pruned entries at 0:
    the momentum buffer never accumulates anything there."""
    client, model, pruned = _received_pruned(client_round)
    client.hooks.after_step = lambda m: None   # disable the re-masking after every step
    client_round.train(client, model, _data(), seed=5)
    for key, after in model_arrays(model).items():
        assert np.all(after[pruned[key] == 0] == 0), key


def _global_round_trip(client_round, sparsity):
    """A Global-variant down message to node 7 in round 3, received and answered untrained."""
    method = _method()
    strategy, client = method.strategy(build_run_model(method.settings)), method.client()
    pruned = _pruned_model(method, sparsity, strategy=strategy)
    content = strategy.encode_down(3, 7, pruned)
    client.server_round = 3
    model = client_round.receive(client, content, RecordDict(), build_run_model(method.settings))
    return strategy, pruned, client_round.send(client, model, RecordDict())


def test_global_uplink_is_values_only_and_decodes_with_the_sent_mask(client_round):
    strategy, pruned, reply = _global_round_trip(client_round, 0.9)
    stype, data = read_payload(reply)
    assert stype.startswith("fedsqueeze/masked@")
    nnz = sum(int(np.count_nonzero(a)) for a in pruned.values())
    # fp32 values only: 4 bytes per kept entry plus a small frame header (no positions)
    assert nnz * 4 < len(data) <= nnz * 4 + 96
    decoded = (strategy.decode_up(3, 7, reply))
    for key, value in decoded.items():
        assert np.array_equal(value, pruned[key])
    with pytest.raises(CodecError):
        strategy.decode_up(3, 8, reply)   # no mask was sent to node 8


def test_downlink_is_nonzero_values_plus_positions_and_never_dense():
    method = _method()
    strategy = method.strategy(build_run_model(method.settings))
    pruned = _pruned_model(method, 0.9, strategy=strategy)
    content = strategy.encode_down(3, 7, pruned)
    _, data = read_payload(content)
    shapes = [a.shape for a in pruned.values()]
    parts = decode_sparse_parts(data, shapes)
    nnz = sum(st.positions.k for st in parts)
    assert nnz == sum(int(np.count_nonzero(a)) for a in pruned.values())
    assert len(data) < 0.2 * 118_282 * 4   # 10 % values + coded positions


def test_global_mask_mismatch_is_a_codec_error(client_round):
    strategy, _, reply = _global_round_trip(client_round, 0.5)
    strategy.sent_masks[7] = [None] * len(strategy.sent_masks[7])   # server now expects dense
    with pytest.raises(CodecError):
        strategy.decode_up(3, 7, reply)


# -- whole rounds in process -------------------------------------------------------------
@pytest.mark.parametrize("variant", ["global", "local"])
def test_rounds_reach_the_target_sparsity_monotonically(variant, tmp_path):
    fed = Federation({"method": "fedsparsify", "fedsparsify.variant": variant,
                      "num-server-rounds": 4, "num-partitions": 20, "seed": 3}, clients=4,
                     results_dir=tmp_path)
    schedule = get_method("fedsparsify")(RunSettings(num_server_rounds=4), {}).schedule
    previous = None
    for t in range(1, 5):
        metrics = fed.run_round()
        plain = {k: fed.arrays[k].numpy() for k in fed.arrays.keys()}
        mask = np.concatenate([(a != 0).ravel() for a in plain.values()])
        if previous is not None:
            assert not np.any(mask & ~previous)   # a pruned weight never comes back
        previous = mask
        assert metrics["target_sparsity"] == pytest.approx(schedule.sparsity(t))
        nnz, kept = int(mask.sum()), metrics["mask_kept"]
        assert nnz <= kept and metrics["sparsity"] == pytest.approx(1 - kept / 118_282)
        if variant == "global":
            assert kept >= (1 - metrics["target_sparsity"]) * 118_282 - 1
            assert metrics["paper_comm_bits"] == 32 * metrics["paper_comm_params"]
        else:
            assert metrics["paper_comm_bits"] == (32 * metrics["paper_comm_params"]
                                                  + 4 * 118_282)
    assert metrics["sparsity"] >= (0.9 - 1e-3 if variant == "global" else 0.5)


def test_config_dataclass_defaults_match_the_spec():
    c = FedSparsifyConfig()
    assert (c.variant, c.initial_sparsity, c.final_sparsity, c.start_round, c.frequency,
            c.exponent, c.average, c.values) == ("global", 0.0, 0.9, 1, 1, 3.0, "all", "fp32")
    assert c.schedule(200).T == 200


def test_zero_initialised_biases_train_until_pruned(client_round):
    """The global mask starts all True: a zero bias is not a pruned weight."""
    method = _method()
    model = build_run_model(RunSettings(model_init="glorot"))
    assert any(not p.any() for p in model.parameters())   # glorot: zero biases
    strategy, client = method.strategy(model), method.client()
    content = strategy.encode_down(1, 7, model_arrays(model))
    client.server_round = 1
    local = client_round.receive(client, content, RecordDict(), build_run_model(method.settings))
    client_round.train(client, local, _data(), seed=1)
    assert all(p.any() for p in local.parameters())
    decoded = (strategy.decode_up(1, 7, client_round.send(client, local, RecordDict())))
    for key, value in model_arrays(local).items():   # the whole trained model came back
        assert np.array_equal(decoded[key], value)


def test_local_uplink_carries_values_and_the_local_mask(client_round):
    method = _method(**{"fedsparsify.variant": "local"})
    strategy, client = method.strategy(build_run_model(method.settings)), method.client()
    pruned = _pruned_model(method, 0.5, strategy=strategy)
    content = strategy.encode_down(5, 7, pruned)
    client.server_round = 5
    model = client_round.receive(client, content, RecordDict(), build_run_model(method.settings))
    reply = client_round.send(client, model, RecordDict())
    assert read_payload(reply)[0].startswith("fedsqueeze/sparse@")
    decoded = (strategy.decode_up(5, 7, reply))
    kept = strategy.kept(strategy.local_masks[7])
    assert kept == pytest.approx((1 - method.schedule.sparsity(5)) * 118_282, abs=2)
    assert sum(int(np.count_nonzero(a)) for a in decoded.values()) <= kept


def test_fp16_values_keep_the_mask_from_positions_not_from_values(client_round):
    """A kept value that rounds to 0 in fp16 stays in the mask on both sides."""
    method = _method(**{"fedsparsify.values": "fp16"})
    strategy, client = method.strategy(build_run_model(method.settings)), method.client()
    pruned = _pruned_model(method, 0.5, strategy=strategy)
    first = next(iter(pruned))
    pruned[first].flat[np.flatnonzero(pruned[first])[0]] = 1e-9   # 0 in fp16
    strategy.mask = [a != 0 for a in pruned.values()]
    content = strategy.encode_down(3, 7, pruned)
    client.server_round = 3
    model = client_round.receive(client, content, RecordDict(), build_run_model(method.settings))
    assert all(np.array_equal(g, m) for g, m in zip(client.global_masks, strategy.mask))
    strategy.decode_up(3, 7, client_round.send(client, model, RecordDict()))  # same digest
