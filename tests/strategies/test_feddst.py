"""FedDST: budgets, the annealed fraction, prune/regrow, masked SGD with momentum, the server's
mask aggregation (plain and explore), and the protocol (mask diffs, stale versions resync)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from flwr.app import RecordDict

from fedsqueeze.codecs import CodecError
from fedsqueeze.deploy.inprocess import Federation, copy_recorddict
from fedsqueeze.models import build_model
from fedsqueeze.strategies.methods.feddst import (
    MASK,
    POSITIONS,
    STATE,
    DSTHooks,
    FedDSTConfig,
    Readjustment,
    budgets,
    explore,
    masked_average,
    prune_and_regrow,
    reprune,
    sparse_layers,
    swap_count,
)
from fedsqueeze.strategies.payload import pack
from fedsqueeze.strategies.settings import ConfigError, from_run_config
from fedsqueeze.strategies.state import load_array_list, save_array_list

RUN = {"method": "feddst", "model": "fc2", "num-partitions": 6, "min-nodes": 2,
       "num-server-rounds": 8, "fraction-train": 0.5, "momentum": 0.9,
       "feddst.alpha": 0.3, "feddst.readjust-every": 2}


def mnistnet_layers():
    return sparse_layers(build_model("mnistnet", 10, (1, 28, 28)))


def test_mnistnet_has_the_specs_parameter_count_and_four_masked_layers():
    model = build_model("mnistnet", 10, (1, 28, 28))
    assert sum(p.numel() for p in model.parameters()) == 261_840
    assert [layer.weights for layer in mnistnet_layers()] == [250, 5000, 256_000, 500]


def test_reference_erk_budgets_on_mnistnet_match_the_spec_under_both_denominators():
    layers = mnistnet_layers()
    ks = budgets(layers, 0.8, "erk")
    per_weight = [round(k / layer.weights, 3) for k, layer in zip(ks, layers)]
    per_param = [round(k / (layer.weights + layer.biases), 3) for k, layer in zip(ks, layers)]
    assert per_weight == [0.260, 0.191, 0.200, 0.286]
    assert per_param == [0.250, 0.190, 0.200, 0.280]


def test_uniform_and_rigl_erk_budgets_keep_the_overall_density():
    layers = mnistnet_layers()
    weights = sum(layer.weights for layer in layers)
    assert budgets(layers, 0.8, "uniform") == [50, 1000, 51_200, 100]
    rigl = budgets(layers, 0.8, "erk-rigl")
    assert abs(sum(rigl) - 0.2 * weights) <= len(layers)   # floors only
    density = [k / layer.weights for k, layer in zip(rigl, layers)]
    raw = [sum(layer.shape) / layer.weights for layer in layers]
    dense = [d == 1.0 for d in density]
    ratios = [d / r for d, r, full in zip(density, raw, dense) if not full]
    assert max(ratios) - min(ratios) < 0.02 * max(ratios)   # density proportional to ERK
    assert all(d <= 1 for d in density)


def test_the_annealed_fraction_and_the_readjustment_rounds():
    schedule = Readjustment(alpha=0.01, every=15, end=200, rule="annealed")
    assert [t for t in range(1, 401) if schedule.due(t)] == list(range(1, 200, 15))
    assert schedule.fraction(1) == pytest.approx(0.005 * (1 + math.cos(math.pi / 200)))
    assert schedule.fraction(2) == 0.0                        # not a readjustment round
    half = Readjustment(alpha=0.01, every=1, end=200, rule="annealed")
    assert half.fraction(100) == pytest.approx(0.005)         # alpha / 2 halfway
    constant = Readjustment(alpha=0.01, every=15, end=200, rule="constant")
    assert constant.fraction(181) == 0.01                     # the reference's fraction
    assert not Readjustment(alpha=0.0, every=15, end=200, rule="annealed").due(1)  # RandomMask
    assert swap_count(0.005, 65) == 0 and swap_count(0.01, 65) == 1  # round(0.65) = 1


@pytest.mark.parametrize("key, value", [("budget", "rigl"), ("sparsity", 1.0),
                                        ("variant", "greedy"), ("min-votes", 0)])
def test_config_errors_name_the_key(key, value):
    with pytest.raises(ConfigError, match=f"feddst.{key}"):
        from_run_config(FedDSTConfig, {f"feddst.{key}": value}, prefix="feddst")


def test_prune_and_regrow_grows_only_inactive_positions_and_keeps_the_count():
    rng = np.random.default_rng(0)
    w = rng.normal(size=100).astype(np.float32)
    mask = np.zeros(100, bool)
    mask[rng.choice(100, 30, replace=False)] = True
    w[~mask] = 0
    grad = rng.normal(size=100).astype(np.float32)
    new = prune_and_regrow(w, mask, grad, 5)
    assert new.sum() == mask.sum()
    pruned, grown = mask & ~new, new & ~mask
    assert pruned.sum() == grown.sum() == 5
    assert np.abs(w[pruned]).max() <= np.abs(w[mask & new]).min()   # the smallest went
    assert np.abs(grad[grown]).min() >= np.abs(grad[~mask & ~new]).max()  # largest |g| came
    grad[mask] = 1e6  # huge gradients on active positions change nothing: never regrown there
    assert np.array_equal(prune_and_regrow(w, mask, grad, 5) & ~mask, grown)


def test_masked_weights_stay_exactly_zero_through_a_users_sgd_with_momentum(tmp_path):
    """The hooks keep the mask through a torch optimizer's steps: the loop calls nothing of
    ours between steps."""
    fed = Federation({**RUN, "weight-decay": 1e-3}, clients=6, results_dir=tmp_path)
    fed.run_round()
    strategy = fed.strategy
    client = strategy.method.client()
    model = build_model("fc2", 10, (1, 28, 28))
    client.layers, client.masks = sparse_layers(model), strategy.masks
    client.server_round = 2  # not a readjustment round
    hooks = DSTHooks(client)
    torch.manual_seed(0)
    x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    hooks.attach(model, optimizer)
    for _ in range(5):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    hooks.after_training(model)
    hooks.detach()
    params = dict(model.named_parameters())
    for layer in client.layers:
        off = ~strategy.masks[layer.index]
        assert off.any() and np.all(params[layer.key].detach().numpy().reshape(-1)[off] == 0)


def test_server_average_counts_only_the_clients_that_keep_a_weight():
    values = [[np.array([1.0, 2.0, 3.0, 4.0], np.float32), np.array([1.0], np.float32)],
              [np.array([3.0, 6.0, 0.0, 9.0], np.float32), np.array([3.0], np.float32)]]
    masks = [[np.array([True, True, False, False]), None],
             [np.array([True, False, False, True]), None]]
    merged = masked_average(values, masks, [1.0, 3.0])
    # entry 0: both (1*1 + 3*3) / 4; entry 1: only client 0; entry 2: nobody; entry 3: client 1
    assert merged[0].tolist() == [2.5, 2.0, 0.0, 9.0]
    assert merged[1].tolist() == [2.5]  # a dense tensor: the example-weighted mean


def test_the_union_is_re_pruned_to_the_budget_by_magnitude():
    w = np.array([0.5, -0.1, 0.0, 0.9, 0.3, 0.0], np.float32)
    union = np.array([True, True, True, True, True, False])
    assert reprune(w, union, 3).tolist() == [True, False, False, True, True, False]
    assert np.array_equal(reprune(w, union, 6), union)   # under budget: the union itself


def test_explore_admits_a_regrown_position_that_the_plain_rule_drops():
    previous = np.array([True, True, True, False, False, False])
    union = np.array([True, True, True, True, True, False])   # two clients regrew 3 and 4
    votes = np.array([2, 2, 1, 2, 1, 0])
    w = np.array([0.5, 0.4, 0.3, 0.0, 0.0, 0.0], np.float32)  # grown weights arrive as zeros
    grad = np.array([0, 0, 0, 0.1, 0.9, 0], np.float32)
    plain = reprune(w, union, 3)
    assert not plain[3] and not plain[4]                       # regrown: dropped
    new = explore(w, previous, union, votes, grad, budget=3, admit=1)
    assert new.tolist() == [True, True, False, True, False, False]  # most votes first
    assert explore(w, previous, union, np.array([2, 2, 1, 1, 1, 0]), grad, 3, 1)[4]  # then |g|


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    fed = Federation(RUN, clients=6, results_dir=tmp_path_factory.mktemp("feddst"))
    rows = []
    for _ in range(6):
        rows.append(fed.run_round())
    return fed, rows


def test_masks_move_only_in_readjustment_rounds_and_keep_their_budgets(run):
    fed, rows = run
    strategy = fed.strategy
    assert [r["feddst_readjusted"] for r in rows] == [True, False, True, False, False, False]
    assert all(r["failed_replies"] == 0 for r in rows)
    for layer, k in zip(strategy.layers, strategy.budgets):
        assert strategy.masks[layer.index].sum() == k
    assert rows[0]["feddst_grown"] > 0 and rows[0]["feddst_dropped"] == rows[0][
        "feddst_entered"]
    assert rows[2]["feddst_survived"] is not None
    assert all(r["feddst_mask_bytes_up"] == 0 for r in rows if not r["feddst_readjusted"])


def test_clients_hold_the_global_mask_and_get_it_again_only_when_it_changed(run):
    fed, rows = run
    strategy = fed.strategy
    for partition in range(6):
        saved = load_array_list(copy_recorddict(fed.state_of(partition)), STATE)
        if saved is None or saved[1]["version"] != strategy.version:
            continue
        flat = np.concatenate([strategy.masks[layer.index] for layer in strategy.layers])
        assert np.array_equal(saved[0][0].astype(bool), flat)
    assert rows[-1]["feddst_mask_held"] + rows[-1]["feddst_mask_diff"] + rows[-1][
        "feddst_mask_full"] == 3
    assert sum(r["feddst_mask_diff"] for r in rows) > 0   # a changed mask went as a diff


def test_a_client_on_a_stale_mask_version_refuses_and_is_resynced(run, tmp_path):
    fed = Federation({**RUN, "fraction-train": 1.0}, clients=3, results_dir=tmp_path)
    fed.run_round()
    state = fed.state_of(1)
    saved = load_array_list(state, STATE)
    save_array_list(state, STATE, saved[0], version="0" * 16)   # lost track of its mask
    row = fed.run_round()
    assert [f["partition_id"] for f in row["failures"]] == [1]
    assert "needs the positions" in row["failures"][0]["reason"]
    after = fed.run_round()
    assert after["failed_replies"] == 0 and after["feddst_mask_full"] == 1
    assert after["feddst_resyncs"] == 1


def test_a_client_mask_that_breaks_the_budget_is_refused(run):
    fed, _ = run
    strategy = fed.strategy
    changes = [np.zeros(layer.weights, bool) for layer in strategy.layers]
    changes[0][np.flatnonzero(~strategy.masks[strategy.layers[0].index])[:2]] = True  # grows 2
    changes[0][np.flatnonzero(strategy.masks[strategy.layers[0].index])[:1]] = True  # prunes 1
    content = RecordDict({MASK: pack(POSITIONS.stype, POSITIONS.encode(changes))})
    with pytest.raises(CodecError, match="budget"):
        strategy.decode_up(1, fed.grid.node_of(0), content)
