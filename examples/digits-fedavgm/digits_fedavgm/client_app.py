"""The ClientApp: a Flower user's handlers; `compression_mod` decodes the downlink into the
plain ArrayRecord they read and encodes their reply (the handlers never see a codec)."""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedsqueeze.strategies import compression_mod

from .task import Net, load_partition, test, train

torch.set_num_threads(1)
app = ClientApp(mods=[compression_mod])


def _model(msg: Message) -> Net:
    model = Net()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    return model


def _data(context: Context):
    return load_partition(int(context.node_config["partition-id"]),
                          int(context.node_config["num-partitions"]))


@app.train()
def handle_train(msg: Message, context: Context) -> Message:
    model, loader = _model(msg), _data(context)
    loss = train(model, loader, int(context.run_config["local-epochs"]),
                 float(msg.content["config"]["lr"]))
    metrics = MetricRecord({"train_loss": loss, "num-examples": len(loader.dataset)})
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def handle_evaluate(msg: Message, context: Context) -> Message:
    loader = _data(context)
    loss, accuracy = test(_model(msg), loader)
    metrics = MetricRecord({"eval_loss": loss, "eval_acc": accuracy,
                            "num-examples": len(loader.dataset)})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
