"""The client's mods: `compression_mod`, the client half of `Compressed`, and `method_mod`,
which runs a method's client side (`ClientSide`) around the user's handler.

    app = ClientApp(mods=[compression_mod])

It decodes a compressed message into the plain `ArrayRecord` the user's handler expects (and
removes the `fsq.*` header from its config), and codes the handler's reply as the header's
uplink channel says; a folded message's records are unfolded for the handler and its reply's
folded (`folding.py`). Messages without a header pass through untouched. What it keeps between
rounds lives in `context.state`: the broadcast model it holds (`fsq.held`, a versioned
downlink) and the uplink's error memory (`fsq.error`). A handler never sees a codec.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp.typing import ClientAppCallable

from fedsqueeze.codecs import CodecError, decode_sparse_parts, get_codec

from . import header as h
from .base import ARRAYS, CONFIG_RECORD, METHOD_KEY, TRAIN, ClientSide
from .channel import Channel, channel_from_spec
from .folding import FOLDED, fold, unfold
from .hooks import using_hooks
from .payload import METRICS_RECORD, is_payload, unpack
from .registry import get_method
from .replies import absurd_values
from .settings import RunSettings, UserValue
from .state import digest, load_array_list, save_array_list
from .tensors import from_arrayrecord, to_arrayrecord, unflatten
from .training import derive_seed

OWN = "own."         # evaluation: the ArrayRecords of a client's own models ("own.<name>")
HELD = "fsq.held"    # context.state: the broadcast model this client holds
HELD_LAYOUT = "fsq.held.layout"  # ... and its layout
SPARSE = get_codec("sparse")
DUPLEX_LAYOUT = "fsq.duplex.layout"  # context.state: the layout of a duplex channel's messages
ERROR = "fsq.error"  # context.state: the uplink's error memory


class DownlinkRejected(ValueError):
    """The server's model is non-finite or absurd: training from it would poison the client."""


def compression_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Decode a `Compressed` message for the handler; code its reply (see the module)."""
    if FOLDED not in msg.content.config_records:
        return _decoded_and_coded(msg, context, call_next)
    msg.content = unfold(msg.content)
    reply = _decoded_and_coded(msg, context, call_next)
    if not reply.has_error():
        reply.content = fold(reply.content)
    return reply


def _decoded_and_coded(msg: Message, context: Context, call_next: ClientAppCallable
                       ) -> Message:
    found = h.header_of(msg.content)
    if found is None:
        return call_next(msg, context)
    config_name, config = found
    key = str(config.get(h.KEY, h.ARRAYS))
    pending = None
    if config.get(h.FORM) == h.DUPLEX:
        layout, coded, raw, pending = _duplex_down(msg.content, config, context.state)
    else:
        layout, coded, raw = _downlink(msg.content, config, key, context.state)
    problem = absurd_values(dict(zip(layout.coded, coded)), 0)
    if problem:
        raise DownlinkRejected(f"downlink rejected: {problem}")
    content = RecordDict({name: record for name, record in msg.content.items()
                          if name not in (key, config_name, h.RAW_RECORD)
                          and not is_payload(record)})
    content[key] = layout.join(coded, raw)
    content[config_name] = h.without_header(config)
    msg.content = content
    reply = call_next(msg, context)
    uplink = str(config.get(h.UP, ""))
    uplink = str(config.get(h.DOWN, "")) if uplink == h.SAME else uplink
    if reply.has_error() or msg.metadata.message_type != MessageType.TRAIN or not uplink:
        return reply
    reply.content = _uplink(reply.content, channel_from_spec(uplink), layout, coded, config,
                            context, pending)
    return reply


def _duplex_down(content: RecordDict, config: ConfigRecord, state: RecordDict
                 ) -> tuple[h.Layout, list[np.ndarray], ArrayRecord | None, object]:
    """A duplex channel's message: (layout, arrays, raw arrays, what its reply needs); the
    layout comes with a client's first message (and is kept) or is the one it keeps."""
    raw = content.array_records.get(h.RAW_RECORD)
    if h.KEYS in config:
        layout = h.Layout.from_config(config, raw)
        state[DUPLEX_LAYOUT] = layout.to_record()
    elif DUPLEX_LAYOUT in state.config_records:
        layout = h.Layout.from_record(state.config_records[DUPLEX_LAYOUT])
    else:
        raise CodecError("a duplex message without a layout, and this client keeps none")
    channel = channel_from_spec(str(config.get(h.DOWN, "")))
    coded, pending = channel.receive(content, state, list(layout.shapes))
    return layout, coded, raw, pending


def _downlink(content: RecordDict, config: ConfigRecord, key: str, state: RecordDict
              ) -> tuple[h.Layout, list[np.ndarray], ArrayRecord | None]:
    """(layout, coded arrays, raw arrays) of a message, holding what it says to hold."""
    down = str(config.get(h.DOWN, ""))
    if h.START in config:
        _hold_start(content, config, state)
        if config.get(h.FORM) == h.MODEL:
            layout, coded = _held(state, str(config.get(h.BASE, "")))
            return layout, coded, content.array_records.get(h.RAW_RECORD)
    if config.get(h.FORM) == h.CATCHUP:
        layout, held = _held(state, str(config.get(h.BASE, "")))
        coded = _caught_up(content, held)
        _hold(state, layout, coded)
        return layout, coded, content.array_records.get(h.RAW_RECORD)
    if not down:  # the arrays travel as they are
        record = content.array_records.get(key)
        if record is None:
            raise CodecError(f"compressed message without its '{key}' ArrayRecord")
        layout = h.Layout.of(record)
        coded, raw = layout.split(record)
        return layout, coded, raw
    channel = channel_from_spec(down)
    raw = content.array_records.get(h.RAW_RECORD)
    if config.get(h.FORM) in (h.CHANGE, h.REPLAY):
        layout, coded = _held(state, str(config.get(h.BASE, "")))
        changes = [content] if config.get(h.FORM) == h.CHANGE else \
            [h.replay_part(content, j) for j in range(int(config.get(h.CHANGES, 0)))]
        for part in changes:  # added one by one in float32, as the server did
            change = channel.decode(part, list(layout.shapes), memory=True)
            coded = [np.add(a, c, dtype=np.float32) for a, c in zip(coded, change)]
        _hold(state, layout, coded)
        return layout, coded, raw
    layout = h.Layout.from_config(config, raw)
    coded = channel.decode(content, list(layout.shapes))
    if config.get(h.HOLD, False):
        _hold(state, layout, coded)
    return layout, coded, raw


def _hold_start(content: RecordDict, config: ConfigRecord, state: RecordDict) -> None:
    """Decode and hold the broadcast model's start that the message carries (`fsq.start`),
    checked bit for bit against its digest (`fsq.base`)."""
    layout = h.Layout.from_config(config, content.array_records.get(h.RAW_RECORD))
    start = channel_from_spec(str(config[h.START]))
    if start.codes != "model":
        raise CodecError(f"fsq.start {config[h.START]!r} is not a model channel")
    coded = [np.asarray(a, np.float32) for a in
             start.decode(h.start_part(content), list(layout.shapes))]
    if digest(*coded).hex() != str(config.get(h.BASE, "")):
        raise CodecError("the start model decodes to another model than the server's")
    _hold(state, layout, coded)


def _caught_up(content: RecordDict, held: list[np.ndarray]) -> list[np.ndarray]:
    """The held model with the catch-up's values set where they changed."""
    flat = np.concatenate([a.reshape(-1) for a in held]).astype(np.float32)
    (part,) = decode_sparse_parts(unpack(content, SPARSE.stype), [(flat.size,)])
    flat[part.indices.astype(np.int64)] = part.values
    return unflatten(flat, [a.shape for a in held])


def _hold(state: RecordDict, layout: h.Layout, coded: list[np.ndarray]) -> None:
    save_array_list(state, HELD, coded, version=digest(*coded).hex())
    state[HELD_LAYOUT] = layout.to_record()


def _held(state: RecordDict, wanted: str) -> tuple[h.Layout, list[np.ndarray]]:
    saved = load_array_list(state, HELD)
    if saved is None or saved[1]["version"] != wanted or HELD_LAYOUT not in state:
        held = "none" if saved is None else saved[1]["version"]
        raise CodecError(f"the change applies to broadcast model {wanted}, this client "
                         f"holds {held}")
    return h.Layout.from_record(state.config_records[HELD_LAYOUT]), saved[0]


def _uplink(content: RecordDict, channel: Channel, layout: h.Layout,
            received: list[np.ndarray], config: ConfigRecord, context: Context,
            pending: object = None) -> RecordDict:
    """The reply with its arrays coded by `channel` (an update: against `received`; a
    duplex channel: with what its downlink left `pending`)."""
    records = list(content.array_records.items())
    if len(records) != 1:
        raise ValueError(f"compression_mod: the reply must carry one ArrayRecord (the model), "
                         f"it carries {len(records)}")
    name, record = records[0]
    local, raw = layout.split(record)
    if channel.codes == "duplex":
        records = channel.reply(local, pending, context.state)
    elif channel.codes == "model":
        records = channel.encode(local).records
    else:
        state = context.state
        if config.get(h.RESET, False):
            _forget(state, ERROR)
        update = [np.subtract(a, r, dtype=np.float32) for a, r in zip(local, received)]
        memory = channel.error_feedback
        saved = load_array_list(state, ERROR) if memory else None
        if saved is not None and [a.shape for a in saved[0]] == [u.shape for u in update]:
            update = [np.add(u, e, dtype=np.float32) for u, e in zip(update, saved[0])]
        seed = 0
        if channel.stochastic:
            partition = context.node_config.get("partition-id", context.node_id)
            seed = derive_seed(int(config.get(h.SEED, 0)),
                               int(config.get("server-round", 0)), int(partition))
        coded = channel.encode(update, seed=seed, memory=memory)
        if memory:
            save_array_list(state, ERROR, [np.subtract(u, d, dtype=np.float32) for u, d in
                                           zip(update, coded.delivered())])
        records = coded.records
    out = RecordDict({n: r for n, r in content.items() if n != name})
    for n, r in records.items():
        out[n] = r
    if raw is not None:
        out[h.RAW_RECORD] = raw
    return out


def _forget(state: RecordDict, name: str) -> None:
    for record in (name, f"{name}.meta"):
        if record in state:
            del state[record]


def error_norm(state: RecordDict) -> float:
    """The L2 norm of this client's uplink error memory (0 when it keeps none)."""
    saved = load_array_list(state, ERROR)
    if saved is None:
        return 0.0
    return float(np.sqrt(sum(float(np.dot(a.ravel(), a.ravel())) for a in saved[0])))


# --------------------------------------------------------------------------- methods
SAVED_METRICS = "fsq.method.metrics"  # context.state: the handler's metrics of this round


def client_side(name: str, run_config: Mapping[str, UserValue]) -> ClientSide:
    """The client side of the method `name`, its keys from run config."""
    settings = dataclasses.replace(RunSettings.from_run_config(run_config), method=name)
    return get_method(name)(settings, run_config).client()


def method_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Run the client side of the method a message names (config `method`): decode what it
    sent into the plain arrays the handler trains from, set the message's `TrainingHooks`
    (`training_hooks()`), and code the handler's reply; a message that names no method passes
    through untouched. Put it after `compression_mod`: `mods=[compression_mod, method_mod]`."""
    config = msg.content.config_records.get(CONFIG_RECORD)
    name = None if config is None else config.get(METHOD_KEY)
    kind = msg.metadata.message_type
    if not name or kind not in (MessageType.TRAIN, MessageType.EVALUATE):
        return call_next(msg, context)
    side = client_side(str(name), context.run_config)
    side.server_round = int(config.get("server-round", 0))
    state = context.state
    if kind == MessageType.EVALUATE:
        models = side.evaluation(msg.content, state)
        msg.content = RecordDict({**{(ARRAYS if n == ARRAYS else f"{OWN}{n}"): to_arrayrecord(a)
                                     for n, a in models.items()}, CONFIG_RECORD: config})
        return call_next(msg, context)
    exchange = str(config.get("exchange", TRAIN))
    if not side.trains(exchange):
        content = side.reply_without_training(exchange, msg.content, state)
        saved = state.metric_records.get(SAVED_METRICS, MetricRecord())
        content[METRICS_RECORD] = MetricRecord({**saved, **side.metrics(exchange, state)})
        return Message(content, reply_to=msg)
    arrays = side.receive(exchange, msg.content, state)
    msg.content = RecordDict({ARRAYS: to_arrayrecord(arrays), CONFIG_RECORD: config})
    with using_hooks(side.hooks):
        reply = call_next(msg, context)
    if reply.has_error():
        return reply
    records = list(reply.content.array_records.values())
    if len(records) != 1:
        raise ValueError(f"method_mod: the reply must carry one ArrayRecord (the model), it "
                         f"carries {len(records)}")
    content = side.send(exchange, from_arrayrecord(records[0]), state)
    metrics = MetricRecord({k: v for record in reply.content.metric_records.values()
                            for k, v in record.items()})
    metrics = MetricRecord({**metrics, **side.metrics(exchange, state)})
    if exchange != TRAIN:
        state[SAVED_METRICS] = metrics
    content[METRICS_RECORD] = metrics
    reply.content = content
    return reply
