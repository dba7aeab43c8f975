"""The ServerApp: Flower's FedAvgM, its traffic compressed both ways by `Compressed` (the
top 10% of each update with error feedback, 8-bit values); bytes per round come back in the
aggregated train metrics (`message-up`, `message-down`, `payload-up`, `payload-down`)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvgM

from fedsqueeze.strategies import Compressed, TopKEF

from .task import Net, load_test, test

app = ServerApp()


def central_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
    model = Net()
    model.load_state_dict(arrays.to_torch_state_dict())
    loss, accuracy = test(model, load_test())
    return MetricRecord({"loss": loss, "accuracy": accuracy})


@app.main()
def main(grid: Grid, context: Context) -> None:
    torch.manual_seed(0)
    config = context.run_config
    sparsity = float(config["sparsity"])
    strategy = Compressed(FedAvgM(fraction_train=float(config["fraction-train"]),
                                  fraction_evaluate=0.0,
                                  server_momentum=float(config["server-momentum"])),
                          uplink=TopKEF(sparsity=sparsity, values="q8"),
                          downlink=TopKEF(sparsity=sparsity, values="q8"))
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(Net().state_dict()),
                            train_config=ConfigRecord({"lr": float(config["lr"])}),
                            num_rounds=int(config["num-server-rounds"]),
                            evaluate_fn=central_evaluate)
    rows = [{"round": t, "accuracy": result.evaluate_metrics_serverapp[t]["accuracy"],
             **{k: int(v) for k, v in result.train_metrics_clientapp[t].items()
                if k.startswith(("message-", "payload-"))}}
            for t in sorted(result.train_metrics_clientapp)]
    for row in rows:
        print(json.dumps(row))
    if config["out"]:
        Path(str(config["out"])).write_text(json.dumps(rows))
