"""The ClientApp: loads its partition and model, hands messages to the method's client side.

Nothing here names a method or a codec. Per-node state lives in `context.state`, which Flower
keeps across rounds in both engines (and discards when a handler raises). Every message
carries the round's config ("server-round", "exchange"), attached by the server's core.
"""

from __future__ import annotations

import time

import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedsqueeze.strategies.base import CONFIG_RECORD, TRAIN, ClientSide
from fedsqueeze.strategies.payload import IDENTITY_RECORD, METRICS_RECORD, identity_record
from fedsqueeze.strategies.registry import get_method
from fedsqueeze.strategies.run_model import build_run_model
from fedsqueeze.strategies.settings import RunSettings
from fedsqueeze.strategies.training import derive_seed, evaluate, seed_torch

from .runtime import (
    client_data,
    client_test_data,
    describe_device,
    engine_name,
    partition_identity,
    pick_device,
)

STATE_RECORD = "fedsqueeze"  # generic per-node bookkeeping in context.state

app = ClientApp()


def _setup(context: Context) -> tuple[RunSettings, torch.device]:
    settings = RunSettings.from_run_config(context.run_config)
    torch.set_num_threads(settings.client_threads)
    return settings, pick_device(settings.client_device)


def _side(settings: RunSettings, context: Context, msg: Message) -> ClientSide:
    side = get_method(settings.method)(settings, context.run_config).client()
    side.server_round = int(msg.content[CONFIG_RECORD]["server-round"])
    return side


@app.query()
def identify(msg: Message, context: Context) -> Message:
    """Report this node's partition id (and that its data and method load) before round 1."""
    settings, device = _setup(context)
    get_method(settings.method)(settings, context.run_config)  # fails early on bad keys
    data = client_data(settings, context.node_config, device)
    identity = identity_record(data.partition_id, device=describe_device(device),
                               engine=engine_name(), num_examples=data.num_examples)
    return Message(RecordDict({IDENTITY_RECORD: identity}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """The train exchange (receive, train, send) or an earlier exchange of the round."""
    started = time.monotonic()
    settings, device = _setup(context)
    partition_id, _ = partition_identity(context.node_config, settings)
    if partition_id in settings.failing_partitions:
        raise RuntimeError(f"fault injected for partition {partition_id} (run-config "
                           f"fail-partitions = {settings.fail_partitions!r})")
    side = _side(settings, context, msg)
    exchange = str(msg.content[CONFIG_RECORD]["exchange"])
    data = client_data(settings, context.node_config, device)
    seed = derive_seed(settings.seed, side.server_round, partition_id)
    seed_torch(seed, device)
    model = build_run_model(settings, side.method.transform)

    if exchange == TRAIN:
        model = side.checked(side.receive(msg.content, context.state, model)).to(device)
        fit_started = time.monotonic()
        metrics = side.train(model, data, context.state, seed)
        fit_seconds = time.monotonic() - fit_started
        model = model.cpu()
        reply = side.send(model, context.state)
        metrics = {**side.metrics(model, context.state), **metrics}
        bookkeeping = context.state.get(STATE_RECORD) or ConfigRecord({"rounds-trained": 0})
        bookkeeping["rounds-trained"] = int(bookkeeping["rounds-trained"]) + 1
        bookkeeping["last-round"] = side.server_round
        context.state[STATE_RECORD] = bookkeeping
        metrics["rounds-trained"] = int(bookkeeping["rounds-trained"])
    else:
        fit_started = time.monotonic()
        reply = side.exchange(exchange, msg.content, context.state, model.to(device), data, seed)
        fit_seconds = time.monotonic() - fit_started
        metrics = {}

    reply[METRICS_RECORD] = MetricRecord({
        **dict(reply.metric_records.get(METRICS_RECORD, {})),  # a method's own, if any
        **metrics,
        "num-examples": data.num_examples,
        "handler-seconds": time.monotonic() - started,  # whole message, incl. set-up
        "fit-seconds": fit_seconds,  # local training (or the exchange's work) alone
        "partition-id": partition_id,  # the identity every reply carries (identity_of)
    })
    return Message(reply, reply_to=msg)


@app.evaluate()
def evaluate_locally(msg: Message, context: Context) -> Message:
    """Accuracy of the model the method names (default: the message's global model) on this
    client's local test split."""
    settings, device = _setup(context)
    partition_id, _ = partition_identity(context.node_config, settings)
    side = _side(settings, context, msg)
    test = client_test_data(settings, context.node_config, device)
    transform = side.method.transform
    model = side.checked(side.evaluation_model(msg.content, context.state,
                                               build_run_model(settings, transform)))
    loss, accuracy = evaluate(model.to(device), test.x, test.y, settings.eval_batch_size)
    own = {f"accuracy-{name}": evaluate(m.to(device), test.x, test.y,
                                        settings.eval_batch_size)[1]
           for name, m in side.own_models(model.cpu(), context.state,
                                          build_run_model(settings, transform)).items()}
    reply = RecordDict({
        METRICS_RECORD: MetricRecord({"accuracy": accuracy, "loss": loss, **own,
                                      "num-examples": test.num_examples,
                                      "partition-id": partition_id}),
    })
    return Message(reply, reply_to=msg)
