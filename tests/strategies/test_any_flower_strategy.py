"""`Compressed` wraps any Flower Message-API strategy, with a user's own ClientApp (its own
model, its own training) behind `compression_mod`; and a robust Flower strategy under
compression is the defence against a scaled update that stays inside `max-abs-value`."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.serverapp.strategy import (
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    Krum,
)

from fedsqueeze.strategies.channels.qsgd import QSGD
from fedsqueeze.strategies.channels.topk_ef import TopKEF

SAMPLING = {"fraction_evaluate": 0.0, "min_available_nodes": 5, "min_train_nodes": 5}
STRATEGIES = {
    "FedAvg": lambda: FedAvg(**SAMPLING),
    "FedAvgM": lambda: FedAvgM(**SAMPLING),
    "FedAdam": lambda: FedAdam(**SAMPLING),
    "FedProx": lambda: FedProx(proximal_mu=0.1, **SAMPLING),
    "FedMedian": lambda: FedMedian(**SAMPLING),
    "FedTrimmedAvg": lambda: FedTrimmedAvg(beta=0.2, **SAMPLING),
    "Krum": lambda: Krum(num_malicious_nodes=1, **SAMPLING),
}


@pytest.mark.parametrize("channel", [TopKEF(sparsity=0.9), QSGD()], ids=["topk-ef", "qsgd"])
@pytest.mark.parametrize("name", STRATEGIES)
def test_any_flower_strategy_runs_with_a_compressed_uplink_and_downlink(
        channel_loop, name, channel):
    loop = channel_loop(channel, channel, clients=5, inner=STRATEGIES[name]())
    for t in range(1, 4):
        exchange = loop.run_round()
        assert len(exchange.replies) == 5 and not loop.strategy.failures
        metrics = loop.strategy.round_metrics(t)
        assert metrics["down_full"] == (5 if t == 1 else 0)
        assert all(np.isfinite(a).all() for a in exchange.after)
    assert any(not np.array_equal(a, b) for a, b in zip(exchange.after, exchange.before))
    metrics = loop.strategy.traffic[3]
    assert all(t["up"].payload > 0 and t["down"].payload > 0 for t in metrics.values())


def _deviation(channel_loop, inner, boost):
    """Max |global - honest global| after one round where client 0 scales its update."""
    honest = channel_loop(TopKEF(sparsity=0.9), None, clients=5, seed=3, inner=inner(),
                          max_abs_value=1e4).run_round().after
    attacked = channel_loop(TopKEF(sparsity=0.9), None, clients=5, seed=3, inner=inner(),
                            boost={0: boost}, max_abs_value=1e4)
    exchange = attacked.run_round()
    assert not attacked.strategy.failures  # inside max-abs-value: nothing to reject
    return max(float(np.abs(a - b).max()) for a, b in zip(exchange.after, honest))


def test_a_robust_strategy_holds_a_scaled_update_that_passes_the_checks(channel_loop):
    """Client 0 sends its update x2000 (about 20 per entry: far inside max-abs-value 1e4, so
    no check refuses it). FedAvg moves the global model by a fifth of it; FedTrimmedAvg (one
    client cut at each end of every coordinate) keeps it where the honest clients put it."""
    fedavg = _deviation(channel_loop, STRATEGIES["FedAvg"], 2000.0)
    trimmed = _deviation(channel_loop, STRATEGIES["FedTrimmedAvg"], 2000.0)
    assert fedavg > 1.0
    assert trimmed < 0.01 * fedavg
