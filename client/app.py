"""The ClientApp: loads its partition and model, hands messages to the method's client side.

Nothing here names a method or a codec. Per-node state lives in `context.state`, which Flower
keeps across rounds in both engines (and discards when a handler raises).
"""

from __future__ import annotations

import time

import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedsqueeze.strategies.payload import IDENTITY_RECORD, METRICS_RECORD, identity_record
from fedsqueeze.strategies.registry import get_method
from fedsqueeze.strategies.run_model import build_run_model
from fedsqueeze.strategies.settings import RunSettings
from fedsqueeze.strategies.training import derive_seed

from .runtime import client_data, describe_device, engine_name, partition_identity, pick_device

STATE_RECORD = "fedsqueeze"  # generic per-node bookkeeping in context.state

app = ClientApp()


def _setup(context: Context) -> tuple[RunSettings, torch.device]:
    settings = RunSettings.from_run_config(context.run_config)
    torch.set_num_threads(settings.client_threads)
    return settings, pick_device(settings.client_device)


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
    started = time.monotonic()
    settings, device = _setup(context)
    partition_id, _ = partition_identity(context.node_config, settings)
    if partition_id in settings.failing_partitions:
        raise RuntimeError(f"fault injected for partition {partition_id} (run-config "
                           f"fail-partitions = {settings.fail_partitions!r})")
    method = get_method(settings.method)(settings, context.run_config)
    side = method.client()
    data = client_data(settings, context.node_config, device)
    server_round = int(msg.content["config"]["server-round"])

    model = build_run_model(settings)
    model = side.receive(msg.content, context.state, model).to(device)
    seed = derive_seed(settings.seed, server_round, partition_id)
    torch.manual_seed(seed)
    fit_started = time.monotonic()
    metrics = side.train(model, data, context.state, seed)
    fit_seconds = time.monotonic() - fit_started
    reply = side.send(model.cpu(), context.state)

    bookkeeping = context.state.get(STATE_RECORD) or ConfigRecord({"rounds-trained": 0})
    bookkeeping["rounds-trained"] = int(bookkeeping["rounds-trained"]) + 1
    bookkeeping["last-round"] = server_round
    context.state[STATE_RECORD] = bookkeeping

    method_metrics = dict(reply.metric_records.get(METRICS_RECORD, {}))  # from side.send
    reply[METRICS_RECORD] = MetricRecord({
        **method_metrics,
        "num-examples": data.num_examples,
        "rounds-trained": int(bookkeeping["rounds-trained"]),
        "handler-seconds": time.monotonic() - started,  # whole message, incl. set-up
        "fit-seconds": fit_seconds,  # local training alone
        **metrics,
    })
    reply[IDENTITY_RECORD] = identity_record(partition_id)
    return Message(reply, reply_to=msg)
