"""`Compressed(strategy, uplink=..., downlink=...)`: channels for any Flower Message-API
strategy, the server half of the pair whose client half is `compression_mod` (the pattern of
Flower's DP wrapper + mod).

The wrapper holds the inner strategy (FedAvg, FedAvgM, FedAdam, FedTrimmedAvg, Krum, ...)
and changes only what travels:

- `configure_train`: the inner strategy's messages, each re-encoded for its node: the arrays
  by the downlink channel, a header in the config record (`strategies/header.py`) that tells
  the mod how to decode them and how to code the reply. Nothing else of the message changes.
- `aggregate_train`: each reply decoded into a plain `ArrayRecord` (the client's model) before
  the inner strategy aggregates; a reply that cannot be decoded, or whose model is non-finite
  or exceeds `max_abs_value`, is rejected (`failures`), and the client's channel state is
  reset: its next message says so, so a remainder the server refused is never sent again.
- evaluation messages carry the model as the downlink's full form (dense fp32, or as it is).

Downlinks. A "model" channel (dense fp32/fp16/bf16/qN) codes the arrays each round, once for
all nodes. An "update" channel (top-k, QSGD, sign, ...) codes the change of a *broadcast
model* B that synced clients hold, with the server's error memory e. Each round, with G the
arrays it is given: D = G - B + e, C = channel(D), B <- B + C, e <- D - C; the inner strategy
is given B as the round's model (clients train from it; a server optimizer steps from it). B
starts as the first model it is given in the channel's `start_dtype` (top-k with q8 values: 8
bits per weight; the inner strategy steps on from that model). A client that holds the
previous B (its digest is mirrored per client, `NodeMirrors`) is sent C and the digest it
applies to; a client that holds an older B still in the history, the catch-up from it
(`strategies/catchup.py`); a client that holds none, the start model as it was first coded
plus the catch-up from it, or B dense (fp32, exact), whichever is smaller. A stale copy is
refused by the client (an error reply) and it is sent B next time (a resync, counted).

Uplinks. A "model" channel codes the client's arrays; an "update" channel codes the client's
model minus the model it received, plus its error memory (`error_feedback`), and the server
decodes reference + update. Without a channel the reply's arrays travel as they are.

With `meter=True` (the default) the wrapper counts payload and message bytes per node and
direction (`traffic[server_round]`) and adds the round's totals to the aggregated train
metrics (`payload-up`, `message-up`, `payload-down`, `message-down`).
"""

from __future__ import annotations

import dataclasses
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log
from flwr.supercore.inflatable.inflatable_object import no_object_id_recompute

from fedsqueeze.codecs import CodecError, encode_sparse_parts, get_codec

from . import header as h
from .catchup import ChangeHistory, Payloads
from .channel import Channel, Coded
from .channels.dense import Dense
from .folding import fold, unfold_replies
from .metering import DOWN, UP, Traffic, layer_bytes
from .payload import PAYLOAD_RECORD, pack, payload_bytes, read_payload
from .replies import NOT_SENT, Failure, absurd_values, majority_metric_keys, screen, weight_problem
from .sinks import RoundSink, deliver, sinks_from_environment
from .state import NodeMirrors, ServerState, digest
from .training import derive_seed

FULL = Dense("fp32")  # how a full transfer (and an evaluation) carries the model
SPARSE = get_codec("sparse")  # how a catch-up carries the current values where they changed
DOWN_SEED_SALT = 0xD0


@dataclasses.dataclass
class Broadcast:
    """The model synced clients hold, the server's error memory, this round's change."""

    layout: h.Layout                # of the model the server was given (float32 arrays coded)
    model: list[np.ndarray]         # its coded arrays
    error: list[np.ndarray]
    previous: bytes = b""           # digest of the broadcast model before this round's change
    change: dict | None = None      # the coded change of this round (records)
    version: bytes = dataclasses.field(init=False)  # digest of `model`

    def __post_init__(self) -> None:
        self.version = digest(*self.model)


@dataclasses.dataclass
class Origin:
    """The broadcast model's start: its digest and its payloads as `start_channel` coded
    them."""

    version: bytes
    payloads: Payloads

    def records(self) -> dict[str, ConfigRecord | ArrayRecord]:
        return {h.start_name(name): pack(stype, data)
                for name, (stype, data) in self.payloads.items()}


@dataclasses.dataclass
class Sent:
    """What a node was sent this round: its group id, the layout, the arrays it decodes (the
    reference of its update), the broadcast version it will hold (None: none)."""

    group: str
    layout: h.Layout
    reference: list[np.ndarray]
    version: bytes | None


class Compressed(Strategy):
    """Compression for any Flower strategy (see the module docstring).

    Parameters
    ----------
    strategy : Strategy
        The strategy whose traffic is compressed; it aggregates plain arrays as always.
    uplink, downlink : Channel or None
        How replies and train messages travel (`fedsqueeze.strategies.channels`); None: as
        Flower's own ArrayRecord.
    seed : int (default: 0)
        Seeds the stochastic channels (both ways), so runs repeat exactly.
    max_abs_value : float (default: 0)
        A decoded model with |w| above this is rejected (0: no bound); non-finite always is.
    min_replies : int (default: 1)
        Fewer decodable replies than this and the round aggregates nothing (None, None).
    meter : bool (default: True)
        Count payload and message bytes per node and direction.
    catchup : int (default: 16)
        A versioned downlink sends a client that missed up to this many rounds the current
        values where the model changed since its version (when smaller than the model);
        0: such a client gets the full model.
    sinks : sequence of RoundSink or None (default: None)
        With `meter`, each round's bytes (payload and message, per direction, in total and
        per node) go to these when the round's replies are aggregated, and the federated
        evaluation's metrics when they are (`strategies/sinks.py`; `TensorBoardSink`, say).
        None: the sink a launcher named in `$FEDSQUEEZE_ROUNDS_LOG`, if any.
    """

    def __init__(self, strategy: Strategy, uplink: Channel | None = None,
                 downlink: Channel | None = None, *, seed: int = 0, max_abs_value: float = 0.0,
                 min_replies: int = 1, meter: bool = True, catchup: int = 16,
                 sinks: Sequence[RoundSink] | None = None) -> None:
        self.strategy = strategy
        self.uplink, self.downlink = uplink, downlink
        self.seed, self.max_abs_value = seed, max_abs_value
        self.min_replies, self.meter = min_replies, meter
        self.sinks = list(sinks_from_environment() if sinks is None else sinks)
        self.versioned = downlink is not None and downlink.codes == "update"
        self.link = None  # a duplex channel's per-client state (ResFed's histories)
        if downlink is not None and downlink.codes == "duplex" or \
                uplink is not None and uplink.codes == "duplex":
            if uplink != downlink:
                raise ValueError(f"Compressed: {(downlink or uplink).spec()} codes both "
                                 "directions: give it as uplink and downlink")
            self.link = downlink.link()
        self._layout: h.Layout | None = None  # of the last train messages
        self.broadcast: Broadcast | None = None
        self.holders: NodeMirrors[bytes, bytes] = NodeMirrors()
        self.history = ChangeHistory(catchup)
        self.start_channel = Dense(downlink.start_dtype) if self.versioned else FULL
        self.origin: Origin | None = None  # B's start, as `start_channel` coded it
        self._catchups: dict[bytes, tuple[dict, dict, int]] = {}  # this round's, by base
        self._starts: dict[bytes, tuple[dict, dict] | None] = {}  # this round's, by version
        self.accepted: set[int] = set()   # clients whose last train reply was accepted
        self.own_failures: list[Failure] = []
        self.traffic: dict[int, dict[int, dict[str, Traffic]]] = {}
        self._client_key: Callable[[int], int] = lambda node_id: node_id
        self._sent: dict[int, Sent] = {}
        self._stats: dict[str, int] = {}
        self._encoded: tuple[ArrayRecord, Channel, Coded] | None = None
        self._dtypes: dict[str, str] = {}

    def __repr__(self) -> str:
        return (f"Compressed({self.strategy!r}, uplink={self._spec(self.uplink)}, "
                f"downlink={self._spec(self.downlink)})")

    @staticmethod
    def _spec(channel: Channel | None) -> str:
        return "" if channel is None else channel.spec()

    # -- what the app reads (and sets) beside Flower's verbs --------------------------------
    @property
    def client_key(self) -> Callable[[int], int]:
        """Node id -> the key a client's state is mirrored under (default: the node id; an
        app that knows partitions keys by partition, which survives a SuperNode restart)."""
        return self._client_key

    @client_key.setter
    def client_key(self, key: Callable[[int], int]) -> None:
        self._client_key = key
        if hasattr(self.strategy, "client_key"):
            self.strategy.client_key = key

    @property
    def failures(self) -> list[Failure]:
        return self.own_failures + list(getattr(self.strategy, "failures", []))

    def round_metrics(self, server_round: int) -> dict[str, Any]:
        own = getattr(self.strategy, "round_metrics", lambda t: {})(server_round)
        if self.link is not None:
            return {**own, **self.link.round_metrics()}
        if not self.versioned:
            return own
        return {**own, "down_change": self._stats.get("change", 0),
                "down_full": self._stats.get("full", 0),
                "down_full_from_start": self._stats.get("from_start", 0),
                "down_catchup": self._stats.get("catchup", 0),
                "down_catchup_replay": self._stats.get("replay", 0),
                "down_catchup_skipped": self._stats.get("skipped", 0),
                "payload_down_catchup": self._stats.get("catchup_bytes", 0),
                "down_resyncs": self.holders.resyncs - self._stats.get("resyncs_before", 0)}

    def models_to_evaluate(self, server_round: int) -> dict[str, list[dict[str, np.ndarray]]]:
        """The broadcast model clients hold (`accuracy_broadcast`), beside the inner's."""
        own = getattr(self.strategy, "models_to_evaluate", lambda t: {})(server_round)
        if self.link is not None and self._layout is not None:
            layout = self._layout
            return {**own, **{name: [dict(zip(layout.coded, arrays)) for arrays in models]
                              for name, models in self.link.models(list(layout.shapes)).items()}}
        if self.broadcast is None:
            return own
        b = self.broadcast
        return {**own, "broadcast": [dict(zip(b.layout.coded, b.model))]}

    def client_state_lost(self, client: int) -> None:
        self.holders.forget(client)
        self.accepted.discard(client)
        if self.link is not None:
            self.link.forget(client)
        if hasattr(self.strategy, "client_state_lost"):
            self.strategy.client_state_lost(client)

    def export_state(self) -> ServerState:
        inner = getattr(self.strategy, "export_state", ServerState)()
        state = ServerState({f"inner/{k}": v for k, v in inner.arrays.items()},
                            {"inner": inner.meta, "accepted": sorted(self.accepted)})
        if self.link is not None:
            link = self.link.export()
            state.arrays.update({f"link/{k}": v for k, v in link.arrays.items()})
            state.meta["link"] = link.meta
        if self.broadcast is not None:
            mirrors = self.holders.export(lambda version: ({}, {"version": version.hex()}))
            state.arrays.update(mirrors.arrays)
            b = self.broadcast
            state.arrays.update({f"broadcast/{i}": a for i, a in enumerate(b.model)})
            state.arrays.update({f"error/{i}": a for i, a in enumerate(b.error)})
            state.meta.update(mirrors=mirrors.meta, keys=list(b.layout.keys),
                              coded=list(b.layout.coded))
            history = self.history.export()
            state.arrays.update({f"history/{k}": v for k, v in history.arrays.items()})
            state.meta["history"] = history.meta
            if self.origin is not None:
                o = self.origin
                state.arrays.update({f"origin/{name}": np.frombuffer(data, np.uint8)
                                     for name, (_, data) in o.payloads.items()})
                state.meta["origin"] = {"version": o.version.hex(), "stypes": {
                    name: stype for name, (stype, _) in o.payloads.items()}}
        return state

    def import_state(self, state: ServerState) -> None:
        inner = {k[len("inner/"):]: v for k, v in state.arrays.items() if k.startswith("inner/")}
        if hasattr(self.strategy, "import_state"):
            self.strategy.import_state(ServerState(inner, state.meta.get("inner", {})))
        self.accepted = {int(c) for c in state.meta.get("accepted", [])}
        if self.link is not None and "link" in state.meta:
            self.link.restore(ServerState({k[len("link/"):]: v for k, v in state.arrays.items()
                                           if k.startswith("link/")}, state.meta["link"]))
        if "keys" in state.meta:
            coded = list(state.meta["coded"])
            model = [np.asarray(state.arrays[f"broadcast/{i}"], np.float32)
                     for i in range(len(coded))]
            layout = h.Layout(tuple(state.meta["keys"]), tuple(coded),
                              tuple(tuple(a.shape) for a in model))
            self.broadcast = Broadcast(layout, model, [
                np.asarray(state.arrays[f"error/{i}"], np.float32) for i in range(len(coded))])
            self.holders.restore(ServerState({}, state.meta["mirrors"]),
                                 lambda arrays, meta: bytes.fromhex(meta["version"]))
            self.history.restore(ServerState(
                {k[len("history/"):]: v for k, v in state.arrays.items()
                 if k.startswith("history/")}, state.meta.get("history", {})))
            origin = state.meta.get("origin")
            self.origin = None if origin is None else Origin(
                bytes.fromhex(origin["version"]),
                {name: (stype, np.asarray(state.arrays[f"origin/{name}"], np.uint8).tobytes())
                 for name, stype in origin["stypes"].items()})

    # -- Flower's verbs --------------------------------------------------------------------
    def summary(self) -> None:
        log(INFO, "\t├──> Compressed: uplink %s, downlink %s",
            self._spec(self.uplink) or "(as it is)", self._spec(self.downlink) or "(as it is)")
        self.strategy.summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.own_failures, self._sent = [], {}
        self._dtypes = {k: a.dtype for k, a in arrays.items()}
        self._stats = {"change": 0, "full": 0, "from_start": 0, "catchup": 0, "replay": 0,
                       "skipped": 0, "catchup_bytes": 0,
                       "resyncs_before": self.holders.resyncs}
        self._catchups, self._starts = {}, {}
        if self.versioned:
            arrays = self._advance_broadcast(server_round, arrays)
        if self.link is not None:
            self.link.begin_round()
        inner = sorted(self.strategy.configure_train(server_round, arrays, config, grid),
                       key=lambda m: self.client_key(m.metadata.dst_node_id))  # fixed order
        messages = [self._encode_train(server_round, m) for m in inner]
        self._measure(server_round, DOWN, messages)
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        self._measure(server_round, UP, replies)
        try:
            decoded = self._decode_replies(server_round, self._unfolded(replies, "train"))
            if len(decoded) < self.min_replies:
                return None, None
            arrays, metrics = self.strategy.aggregate_train(server_round, decoded)
        finally:
            self._end_round()
        if arrays is not None:
            arrays = self._as_given(arrays)
        if self.meter:
            round_bytes = self._round_bytes(server_round)
            deliver(self.sinks, {"round": server_round, **{k.replace("-", "_"): v
                                                  for k, v in round_bytes.items()},
                        "per_client": self._bytes_by_node(server_round)})
            if metrics is not None:
                metrics = MetricRecord({**metrics, **round_bytes})
        return arrays, metrics

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return [self._encode_evaluate(server_round, m) for m in
                self.strategy.configure_evaluate(server_round, arrays, config, grid)]

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        metrics = self.strategy.aggregate_evaluate(server_round,
                                                 self._unfolded(replies, "evaluate"))
        if self.meter and metrics is not None:
            deliver(self.sinks, {"round": server_round, "evaluate": dict(metrics)})
        return metrics

    def _as_given(self, arrays: ArrayRecord) -> ArrayRecord:
        """The inner's aggregate in the dtypes of the model it was given (Flower's FedAdam,
        say, returns float64 arrays for a float32 model: twice the bytes, and arrays no
        channel codes)."""
        if all(self._dtypes.get(k, a.dtype) == a.dtype for k, a in arrays.items()):
            return arrays
        return ArrayRecord({k: Array(np.asarray(a.numpy(), self._dtypes[k])) if k in self._dtypes
                            else a for k, a in arrays.items()})

    # -- downlink --------------------------------------------------------------------------
    def _advance_broadcast(self, server_round: int, arrays: ArrayRecord) -> ArrayRecord:
        """B of this round (see the module docstring), as the ArrayRecord the inner sends."""
        layout = h.Layout.of(arrays)
        g, raw = layout.split(arrays)
        b = self.broadcast
        if b is None or b.layout != layout:
            coded = self.start_channel.encode(g)
            self.broadcast = Broadcast(layout, [np.array(x, np.float32) for x in
                                                coded.delivered()],
                                       [np.zeros_like(x) for x in g])
            self.origin = Origin(self.broadcast.version, _payloads(coded.records))
            self.history.start(self.broadcast.version, sum(x.size for x in g))
        else:
            d = [np.add(np.subtract(x, m, dtype=np.float32), e, dtype=np.float32)
                 for x, m, e in zip(g, b.model, b.error)]
            coded = self.downlink.encode(
                d, seed=derive_seed(self.seed, server_round, DOWN_SEED_SALT), memory=True)
            delivered = coded.delivered()
            self.broadcast = Broadcast(
                layout, [np.add(m, c, dtype=np.float32) for m, c in zip(b.model, delivered)],
                [np.subtract(x, c, dtype=np.float32) for x, c in zip(d, delivered)],
                b.version, coded.records)
            self.history.record(self.broadcast.version,
                                np.concatenate([c.reshape(-1) != 0 for c in delivered]),
                                _payloads(coded.records))
        return layout.join(self.broadcast.model, raw)

    def _encode_train(self, server_round: int, message: Message) -> Message:
        node_id = message.metadata.dst_node_id
        client = self.client_key(node_id)
        key, record, config, rest = _parts(message)
        layout = h.Layout.of(record)
        header: dict[str, Any] = {}
        if self.uplink is not None:
            header[h.UP] = self.uplink.spec()
            if self.uplink.error_feedback and client not in self.accepted:
                header[h.RESET] = True
            if self.uplink.stochastic:
                header[h.SEED] = self.seed
        self.accepted.discard(client)  # until its reply is accepted
        version = None
        self._layout = layout
        if self.versioned:
            coded, reference, version = self._versioned_down(client, layout, record, header)
        elif self.link is not None:
            coded, reference = self._duplex_down(server_round, client, layout, record, header)
        else:
            coded, reference = self._down(record, layout, header)
        if h.UP in header and header[h.UP] == header.get(h.DOWN):
            header[h.UP] = h.SAME  # the same spec once
        out = self._message(message, key, rest, coded, config, header, MessageType.TRAIN,
                            f"{server_round}:train")
        self._sent[node_id] = Sent(out.metadata.group_id, layout, reference, version)
        return out

    def _down(self, record: ArrayRecord, layout: h.Layout, header: dict[str, Any],
              channel: Channel | None = None) -> tuple[dict, list[np.ndarray]]:
        """The arrays as `channel` (default: the downlink) codes them, once for all the nodes a
        record goes to; (records of the message, the arrays the client decodes)."""
        channel = self.downlink if channel is None else channel
        coded, raw = layout.split(record)
        header[h.FORM] = h.MODEL
        if channel is None:
            header[h.DOWN] = ""
            return {None: record}, coded
        header.update({h.DOWN: channel.spec(), **layout.to_config()})
        cached = self._encoded
        if cached is None or cached[0] is not record or cached[1] is not channel:
            cached = (record, channel, channel.encode(coded, seed=0, memory=False))
            self._encoded = cached
        records = {} if raw is None else {h.RAW_RECORD: raw}
        return {**records, **cached[2].records}, cached[2].delivered()

    def _versioned_down(self, client: int, layout: h.Layout, record: ArrayRecord,
                        header: dict[str, Any]) -> tuple[dict, list[np.ndarray], bytes]:
        b = self.broadcast
        assert b is not None
        if layout != b.layout:
            raise ValueError(f"Compressed: a versioned downlink ({self.downlink.spec()}) needs "
                             f"the inner strategy to send the whole model it was given; "
                             f"{type(self.strategy).__name__} sends {len(record)} of "
                             f"{len(b.layout.keys)} arrays")
        version = b.version
        self.holders.stage(client, version)
        held = self.holders.get(client)
        if b.change is not None and held == b.previous:
            self._stats["change"] += 1
            header.update({h.FORM: h.CHANGE, h.DOWN: self.downlink.spec(),
                           h.BASE: b.previous.hex()})
            _, raw = layout.split(record)
            return {**b.change, **({} if raw is None else {h.RAW_RECORD: raw})}, b.model, version
        _, raw = layout.split(record)
        catchup = None if held is None else self._catchup(held)
        if catchup is not None:
            records, form, skipped = catchup
            self._stats["catchup"] += 1
            self._stats["replay"] += form[h.FORM] == h.REPLAY
            self._stats["skipped"] += skipped
            self._stats["catchup_bytes"] += payload_bytes(RecordDict(records))
            header.update({**form, h.BASE: held.hex()})
            return {**records, **({} if raw is None else {h.RAW_RECORD: raw})}, b.model, version
        if held is None:  # a client synced before that lost its copy (failure, restart)
            self.holders.reset(client)  # counts a resync; an older copy (sat out) does not
        self._stats["full"] += 1
        header[h.HOLD] = True
        start = self._from_start(layout)
        if start is not None:
            records, form = start
            self._stats["from_start"] += 1
            header.update(form)
            return {**records, **({} if raw is None else {h.RAW_RECORD: raw})}, b.model, version
        records, _ = self._down(record, layout, header, FULL)
        return records, b.model, version

    def _from_start(self, layout: h.Layout) -> tuple[dict, dict[str, Any]] | None:
        """(records, header) that take a client holding no model to the current broadcast
        model: the start model as first coded, then the catch-up from it (none while the
        broadcast is still at its start); None when the start is fp32 (then never smaller than
        the model), when the history no longer reaches back to it, or when that is not
        smaller than the model in fp32. Computed once per round."""
        version = self.broadcast.version
        if version not in self._starts:
            self._starts = {version: self._start_form(layout)}
        return self._starts[version]

    def _start_form(self, layout: h.Layout) -> tuple[dict, dict[str, Any]] | None:
        o = self.origin
        if o is None or self.start_channel.dtype == "fp32":
            return None
        form: dict[str, Any] = {h.START: self.start_channel.spec(), h.BASE: o.version.hex(),
                                **layout.to_config()}
        size = sum(len(data) for _, data in o.payloads.values())
        records = o.records()
        if o.version == self.broadcast.version:
            form[h.FORM] = h.MODEL
        else:
            catchup = self._catchup(o.version)
            if catchup is None:
                return None
            size += payload_bytes(RecordDict(catchup[0]))
            records = {**records, **catchup[0]}
            form.update(catchup[1])
        model = 4 * sum(x.size for x in self.broadcast.model)
        return (records, form) if size < model else None

    def _catchup(self, held: bytes) -> tuple[dict, dict[str, Any], int] | None:
        """(records, header, versions missed) of the catch-up from `held` to the current
        broadcast model, in the smaller of its two forms (`strategies/catchup.py`) when that is
        smaller than the model; None otherwise (or when the history does not reach back to
        `held`). Computed once per held version and round."""
        if held not in self._catchups:
            changed = self.history.changed_since(held)
            if changed is None:
                return None
            model = np.concatenate([m.reshape(-1) for m in self.broadcast.model])
            idx = np.flatnonzero(changed)
            values = encode_sparse_parts([(model.size,)], [idx], [model[idx]], values="fp32")
            changes = self.history.payloads_since(held)
            replayed = sum(len(data) for change in changes for _, data in change.values())
            if min(len(values), replayed) >= 4 * model.size:
                return None
            if len(values) <= replayed:
                records = {PAYLOAD_RECORD: pack(SPARSE.stype, values)}
                form: dict[str, Any] = {h.FORM: h.CATCHUP}
            else:
                records = {h.replay_name(j, name): pack(stype, data)
                           for j, change in enumerate(changes)
                           for name, (stype, data) in change.items()}
                form = {h.FORM: h.REPLAY, h.CHANGES: len(changes),
                        h.DOWN: self.downlink.spec()}
            self._catchups[held] = (records, form, len(changes) - 1)
        return self._catchups[held]

    def _duplex_down(self, server_round: int, client: int, layout: h.Layout,
                     record: ArrayRecord, header: dict[str, Any]) -> tuple[dict, list]:
        """A duplex channel's message for one client; the layout travels when it starts over."""
        coded, raw = layout.split(record)
        records, fresh = self.link.encode(server_round, client, coded)
        header.update({h.FORM: h.DUPLEX, h.DOWN: self.downlink.spec()})
        if fresh:
            header.update(layout.to_config())
        return {**records, **({} if raw is None else {h.RAW_RECORD: raw})}, []

    def _encode_evaluate(self, server_round: int, message: Message) -> Message:
        key, record, config, rest = _parts(message)
        header: dict[str, Any] = {}
        coded, _ = self._down(record, h.Layout.of(record), header,
                              None if self.downlink is None else FULL)
        return self._message(message, key, rest, coded, config, header,
                             MessageType.EVALUATE, f"{server_round}:evaluate")

    @staticmethod
    def _message(message: Message, key: str, rest: dict, coded: dict, config: tuple,
                 header: dict[str, Any], message_type: str, group: str) -> Message:
        config_name, config_record = config
        content = RecordDict(rest)
        for name, record in coded.items():
            content[key if name is None else name] = record
        if key != h.ARRAYS:
            header[h.KEY] = key
        content[config_name] = ConfigRecord({**config_record, **header})
        return Message(fold(content), dst_node_id=message.metadata.dst_node_id,
                       message_type=message.metadata.message_type or message_type,
                       group_id=message.metadata.group_id or group, ttl=message.metadata.ttl)

    # -- uplink ----------------------------------------------------------------------------
    def _unfolded(self, replies: Iterable[Message], phase: str) -> list[Message]:
        """The replies with their records unfolded (`folding.py`); a malformed one fails (a
        train reply as any refused one: its client's channel starts over)."""
        good, malformed = unfold_replies(replies)
        for reply, reason in malformed:
            if phase == "train":
                self._fail(reply.metadata.src_node_id, reason)
            else:
                log(WARNING, "node %d (%s): %s", reply.metadata.src_node_id, phase, reason)
                self.own_failures.append(Failure(reply.metadata.src_node_id, phase, reason))
        return good

    def _decode_replies(self, server_round: int, replies: list[Message]) -> list[Message]:
        good, problems = screen(replies, {n: s.group for n, s in self._sent.items()})
        for reply, reason in problems:
            self._fail(reply.metadata.src_node_id, reason)
        weight = getattr(self.strategy, "weighted_by_key", None)
        decoded: list[Message] = []
        for reply in good:
            node_id = reply.metadata.src_node_id
            problem = weight and weight_problem(reply, weight)
            if problem:
                self._fail(node_id, problem)
                continue
            try:
                arrays = self._decode_up(server_round, node_id, self._sent[node_id],
                                         reply.content)
            except (CodecError, KeyError, ValueError) as err:
                self._fail(node_id, f"undecodable reply: {err}")
                continue
            problem = absurd_values(dict(arrays.items()), self.max_abs_value)
            if problem:
                self._fail(node_id, f"rejected: {problem}")
                continue
            content = RecordDict({h.ARRAYS: arrays, **reply.content.metric_records})
            decoded.append(Message(content=content, metadata=reply.metadata))
        decoded, problems = majority_metric_keys(decoded)
        for reply, reason in problems:
            self._fail(reply.metadata.src_node_id, reason)
        for reply in decoded:
            node_id = reply.metadata.src_node_id
            client = self.client_key(node_id)
            self.accepted.add(client)
            version = self._sent[node_id].version
            if version is not None:
                self.holders.commit(client, version)
        return decoded

    def _decode_up(self, server_round: int, node_id: int, sent: Sent, content: RecordDict
                   ) -> ArrayRecord:
        layout, channel = sent.layout, self.uplink
        raw = content.array_records.get(h.RAW_RECORD)
        if self.link is not None:
            coded = self.link.decode(server_round, self.client_key(node_id), content,
                                     list(layout.shapes))
        elif channel is None:
            records = [r for name, r in content.array_records.items() if name != h.RAW_RECORD]
            if len(records) != 1:
                raise CodecError(f"a reply must carry one ArrayRecord, it has {len(records)}")
            coded, raw = layout.split(records[0])
        elif channel.codes == "model":
            coded = channel.decode(content, list(layout.shapes))
        else:
            update = channel.decode(content, list(layout.shapes), memory=channel.error_feedback)
            coded = [np.add(r, u, dtype=np.float32) for r, u in zip(sent.reference, update)]
        return layout.join(coded, raw)

    def _fail(self, node_id: int, reason: str) -> None:
        log(WARNING, "node %d (train): %s", node_id, reason)
        self.own_failures.append(Failure(node_id, "train", reason))
        if reason != NOT_SENT:  # the node's own reply was refused: its channel starts over
            self.client_state_lost(self.client_key(node_id))

    def _end_round(self) -> None:
        """Clients sent a message whose reply never committed lose their mirror."""
        self.holders.end_round()
        if self.link is not None:
            self.link.end_round()

    # -- bytes -----------------------------------------------------------------------------
    def _measure(self, server_round: int, direction: str, messages: list[Message]) -> None:
        if not self.meter:
            return
        per_node = self.traffic.setdefault(server_round, defaultdict(
            lambda: {UP: Traffic(), DOWN: Traffic()}))
        with no_object_id_recompute():
            for message in messages:
                node_id = (message.metadata.dst_node_id if direction == DOWN
                           else message.metadata.src_node_id)
                per_node[node_id][direction].measure(message, 1 << 28)

    def _bytes_by_node(self, server_round: int) -> dict[str, dict[str, int]]:
        return {str(node_id): layer_bytes(t)
                for node_id, t in sorted(self.traffic.get(server_round, {}).items())}

    def _round_bytes(self, server_round: int) -> dict[str, int]:
        totals: Counter = Counter()
        for t in self.traffic.get(server_round, {}).values():
            for direction in (UP, DOWN):
                totals[f"payload-{direction}"] += t[direction].payload
                totals[f"message-{direction}"] += t[direction].message
        return dict(totals)


def _payloads(records: dict[str, ConfigRecord | ArrayRecord]) -> Payloads:
    """(stype, codec bytes) of a coding's records, by record name."""
    return {name: read_payload(RecordDict(records), name) for name in records}


def _parts(message: Message) -> tuple[str, ArrayRecord, tuple[str, ConfigRecord], dict]:
    """(name of its ArrayRecord, the record, (name, config record), the other records)."""
    content = message.content
    arrays = list(content.array_records.items())
    if len(arrays) != 1:
        raise ValueError(f"Compressed: the inner strategy's messages must carry one ArrayRecord "
                         f"(the model), this one carries {len(arrays)}")
    configs = list(content.config_records.items())
    config = configs[0] if configs else ("config", ConfigRecord())
    rest = {name: record for name, record in content.items()
            if name != arrays[0][0] and name != config[0]}
    return arrays[0][0], arrays[0][1], config, rest
