"""A method's client side around a user's own handler: its own torch optimizer (SGD with
momentum and weight decay) honours the method through `training_hooks()` alone, calling
nothing of fedsqueeze between steps (docs/architecture.md, what your ClientApp must do)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedsqueeze.deploy.inprocess import InProcessGrid
from fedsqueeze.strategies import (
    compression_mod,
    method_mod,
    strategy_from_run_config,
    training_hooks,
)
from fedsqueeze.strategies.run_model import build_run_model
from fedsqueeze.strategies.settings import RunSettings
from fedsqueeze.strategies.tensors import from_arrayrecord, load_arrays, model_arrays


def users_app(seen: list[dict]) -> ClientApp:
    app = ClientApp(mods=[compression_mod, method_mod])

    @app.train()
    def train(msg, context):
        model = build_run_model(RunSettings.from_run_config(context.run_config))
        received = from_arrayrecord(msg.content["arrays"])
        load_arrays(model, received)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9,
                                    weight_decay=1e-3)
        hooks = training_hooks()
        hooks.attach(model, optimizer)
        generator = torch.Generator().manual_seed(context.node_id)
        for _ in range(5):  # the user's own loop, on its own data
            x = torch.rand(16, 1, 28, 28, generator=generator)
            y = torch.randint(0, 10, (16,), generator=generator)
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
        hooks.after_training(model)
        hooks.detach()
        trained = model_arrays(model)
        seen.append({k: (received[k], trained[k]) for k in trained})
        arrays = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in trained.items()})
        return Message(RecordDict({"arrays": arrays,
                                   "metrics": MetricRecord({
                                       "num-examples": 16,
                                       "partition-id": context.node_config["partition-id"]})}),
                       reply_to=msg)

    return app


@pytest.mark.parametrize("variant", ["global", "local"])
def test_a_users_loop_keeps_fedsparsifys_pruned_weights_at_zero(variant):
    """FedSparsify's strategy under Flower's `start`, the user's ClientApp on 3 nodes."""
    run_config = {"method": "fedsparsify", "fedsparsify.variant": variant,
                  "fedsparsify.start-round": 0, "num-server-rounds": 3}
    seen: list[dict] = []
    strategy, arrays = strategy_from_run_config(run_config)
    grid = InProcessGrid(run_config, clients=3, clientapp=users_app(seen))
    result = strategy.start(grid=grid, initial_arrays=arrays, num_rounds=3)
    assert sorted(result.train_metrics_clientapp) == [1, 2, 3] and not strategy.failures
    kept = sum(int(m.sum()) for m in strategy.mask if m is not None)
    assert kept < 0.5 * 118_282  # pruned by the schedule
    pruned_and_kept = 0
    for received_and_trained in seen[3:]:  # rounds 2-3: the model came pruned
        for received, trained in received_and_trained.values():
            pruned = received == 0
            assert np.all(trained[pruned] == 0)  # momentum and weight decay never moved them
            pruned_and_kept += int(pruned.sum())
    assert pruned_and_kept > 0
