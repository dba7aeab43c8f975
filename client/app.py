"""The ClientApp: a Flower user's ClientApp, written against fedsqueeze's public API.

    app = ClientApp(mods=[compression_mod, method_mod])

The mods do everything a method and a channel need (decode what the server sent into the plain
model, code the reply, keep per-node state in `context.state`); the handlers load their
partition and the run's model, train it with local SGD honouring the message's
`training_hooks()`, and return the plain model with their metrics. Nothing here names a method
or a codec. Every message names its method (config `method`, else run config's) and round.
"""

from __future__ import annotations

import dataclasses
import time

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch import nn

from fedsqueeze.strategies.base import ARRAYS, CONFIG_RECORD, METHOD_KEY
from fedsqueeze.strategies.hooks import training_hooks
from fedsqueeze.strategies.mods import OWN, DownlinkRejected, compression_mod, method_mod
from fedsqueeze.strategies.payload import IDENTITY_RECORD, METRICS_RECORD, identity_record
from fedsqueeze.strategies.registry import get_method
from fedsqueeze.strategies.replies import absurd_values
from fedsqueeze.strategies.run_model import build_run_model
from fedsqueeze.strategies.settings import RunSettings, names_in
from fedsqueeze.strategies.tensors import (
    from_arrayrecord,
    load_arrays,
    model_arrays,
    to_arrayrecord,
    travelling_keys,
)
from fedsqueeze.strategies.training import (
    METRIC_PREFIX,
    derive_seed,
    evaluate,
    local_training,
    seed_torch,
)

from .runtime import (
    client_data,
    client_test_data,
    describe_device,
    engine_name,
    partition_identity,
    pick_device,
)

STATE_RECORD = "fedsqueeze"  # generic per-node bookkeeping in context.state

app = ClientApp(mods=[compression_mod, method_mod])


def _setup(context: Context, msg: Message | None = None) -> tuple[RunSettings, torch.device]:
    """The run's settings (the method the message names, if it names one) and the device."""
    settings = RunSettings.from_run_config(context.run_config)
    config = None if msg is None else msg.content.config_records.get(CONFIG_RECORD)
    if config is not None and METHOD_KEY in config:
        settings = dataclasses.replace(settings, method=str(config[METHOD_KEY]))
    torch.set_num_threads(settings.client_threads)
    return settings, pick_device(settings.client_device)


def _server_round(msg: Message) -> int:
    return int(msg.content.config_records.get(CONFIG_RECORD, {}).get("server-round", 0))


def received_model(settings: RunSettings, context: Context, record: ArrayRecord) -> nn.Module:
    """The run's model holding a message's arrays; DownlinkRejected for a non-finite or
    absurd one (training from it would poison this client)."""
    transform = get_method(settings.method)(settings, context.run_config).transform
    model = build_run_model(settings, transform)
    arrays = from_arrayrecord(record)
    if list(arrays) != travelling_keys(model):
        raise ValueError(f"the message's arrays {list(arrays)[:3]}... are not the run model's "
                         f"{travelling_keys(model)[:3]}...")
    problem = absurd_values(arrays, settings.max_abs_value)
    if problem:
        raise DownlinkRejected(f"downlink rejected: {problem}")
    load_arrays(model, arrays)
    return model


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
    """Local SGD from the message's model, honouring the method's training hooks."""
    started = time.monotonic()
    settings, device = _setup(context, msg)
    partition_id, _ = partition_identity(context.node_config, settings)
    if partition_id in settings.failing_partitions:
        raise RuntimeError(f"fault injected for partition {partition_id} (run-config "
                           f"fail-partitions = {settings.fail_partitions!r})")
    server_round = _server_round(msg)
    data = client_data(settings, context.node_config, device)
    seed = derive_seed(settings.seed, server_round, partition_id)
    seed_torch(seed, device)
    model = received_model(settings, context, msg.content.array_records[ARRAYS]).to(device)
    fit_started = time.monotonic()
    loss = local_training(model, data, settings, server_round, seed, training_hooks())
    fit_seconds = time.monotonic() - fit_started
    bookkeeping = context.state.get(STATE_RECORD) or ConfigRecord({"rounds-trained": 0})
    bookkeeping["rounds-trained"] = int(bookkeeping["rounds-trained"]) + 1
    bookkeeping["last-round"] = server_round
    context.state[STATE_RECORD] = bookkeeping
    reply = RecordDict({
        ARRAYS: to_arrayrecord(model_arrays(model.cpu())),
        METRICS_RECORD: MetricRecord({
            "train-loss": loss,
            "rounds-trained": int(bookkeeping["rounds-trained"]),
            "num-examples": data.num_examples,
            "handler-seconds": time.monotonic() - started,  # whole message, incl. set-up
            "fit-seconds": fit_seconds,  # local training alone
            "partition-id": partition_id,  # the identity every reply carries (identity_of)
        }),
    })
    return Message(reply, reply_to=msg)


@app.evaluate()
def evaluate_locally(msg: Message, context: Context) -> Message:
    """Accuracy on this client's local test split of the message's model ("arrays": the
    global model, or a personalised method's own) and of each other model it carries
    ("own.<name>": `accuracy-<name>`)."""
    settings, device = _setup(context, msg)
    partition_id, _ = partition_identity(context.node_config, settings)
    test = client_test_data(settings, context.node_config, device)
    metrics: dict[str, float] = {}
    for name, record in msg.content.array_records.items():
        model = received_model(settings, context, record).to(device)
        loss, accuracy, registered = evaluate(
            model, test.x, test.y, settings.eval_batch_size, settings.loss,
            names_in(settings.metrics) if name == ARRAYS else ())
        if name == ARRAYS:
            metrics.update(accuracy=accuracy, loss=loss)
            metrics.update({f"{METRIC_PREFIX}{k}": v for k, v in registered.items()})
        elif name.startswith(OWN):
            metrics[f"accuracy-{name[len(OWN):]}"] = accuracy
    reply = RecordDict({
        METRICS_RECORD: MetricRecord({**metrics, "num-examples": test.num_examples,
                                      "partition-id": partition_id}),
    })
    return Message(reply, reply_to=msg)
