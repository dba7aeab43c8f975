"""The method contract's classes: `Method`, `SqueezeStrategy` (the server side of a method
that codes its own messages, a Flower strategy) and `ClientSide` (its client side, run by
`method_mod`). The contract itself is the package docstring (`fedsqueeze.strategies`); a test
checks that its signatures match these classes."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from logging import WARNING
from typing import Any, ClassVar

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Strategy
from flwr.serverapp.strategy.strategy_utils import sample_nodes
from flwr.supercore import log
from torch import nn

from fedsqueeze.codecs import CodecError

from .folding import fold, unfold_replies
from .hooks import TrainingHooks
from .model_codec import DenseModelCodec
from .model_transform import ModelTransform, model_transform_of
from .replies import (
    NOT_SENT,
    Failure,
    absurd_values,
    all_finite,
    majority_metric_keys,
    screen,
    weight_problem,
)
from .run_model import build_run_model
from .settings import MethodConfig, RunSettings, UserValue, from_run_config, to_run_config
from .state import ServerState
from .tensors import (
    Arrays,
    expected_shapes,
    from_arrayrecord,
    model_arrays,
    to_arrayrecord,
    travelling_keys,
)

TRAIN = "train"
EVALUATE = "evaluate"
CONFIG_RECORD = "config"  # the round's config: server-round, exchange, method
METHOD_KEY = "method"     # config key naming the method of a message (its client side)
ARRAYS = "arrays"         # the plain model of a message, as Flower's strategies name it


class Method:
    """One federated method: its config, its server strategy and its client side."""

    name: ClassVar[str]
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    Strategy: ClassVar[type[Strategy]]
    Client: ClassVar[type[ClientSide]]
    #: the model transform this method needs ("" = whatever run config `model-transform` says)
    model_transform: ClassVar[str] = ""
    #: its messages carry the plain model (a Flower strategy's): channels compose with it
    plain: ClassVar[bool] = False
    #: a plain method whose messages carry only part of the model (no versioned downlink)
    partial: ClassVar[bool] = False

    def __init__(self, settings: RunSettings, run_config: Mapping[str, UserValue]) -> None:
        self.settings = settings
        self.config = from_run_config(self.Config, run_config, prefix=self.name)
        self.transform = model_transform_of(settings, run_config, self.model_transform)
        self.schedule = self.config.schedule(settings.num_server_rounds)

    def strategy(self, model: nn.Module, **options: Any) -> Strategy:
        """The Flower strategy that runs this method's server side for `model` (`options`:
        Flower's sampling arguments, and for a coded method `SqueezeStrategy`'s own)."""
        return self.Strategy(self, model, **options)

    def client(self) -> ClientSide:
        """What a client does with this method's messages (`method_mod` runs it)."""
        return self.Client(self)

    @property
    def spreads_outliers(self) -> bool:
        """Whether a client's outlier entries reach the server spread or scaled down (a
        method that clips or quantizes by groups), so a poisoned reply can arrive bounded
        instead of being rejected."""
        return False

    def default_channel(self) -> str:
        """The channel a plain method's model travels by when run config names none (its
        fields from run config: `dense.dtype`)."""
        return "dense"

    def structure(self) -> nn.Module:
        """The run's model as this method trains it (built once per process; read only)."""
        return run_structure(self.settings, self.transform)

    def run_config(self) -> dict[str, UserValue]:
        """This method's keys and values (for config.json)."""
        return to_run_config(self.config, prefix=self.name)


@functools.lru_cache(maxsize=8)
def run_structure(settings: RunSettings, transform: ModelTransform | None) -> nn.Module:
    """The run's model, for its keys, shapes and parameters (never trained or changed)."""
    return build_run_model(settings, transform)


class Tagged:
    """Mixin for a Flower strategy registered as a method: its messages name the method
    (config `method`), so a client runs the method's side and builds its model."""

    method_name: str = ""

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        config[METHOD_KEY] = self.method_name
        return super().configure_train(server_round, arrays, config, grid)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        config[METHOD_KEY] = self.method_name
        return super().configure_evaluate(server_round, arrays, config, grid)


class ClientSide:
    """What `method_mod` calls for a method's messages (see the package docstring). The
    defaults are a plain method's: the model travels as Flower's ArrayRecord (decoded by
    `compression_mod` already), and local training has no requirement."""

    #: the round of the message being handled; set by `method_mod` before any hook runs
    server_round: int = 0

    def __init__(self, method: Method) -> None:
        self.method = method
        self.settings = method.settings
        self.hooks = TrainingHooks()

    def trains(self, exchange: str) -> bool:
        """Whether the handler trains for this exchange (else `reply_without_training`)."""
        return True

    def receive(self, exchange: str, content: RecordDict, state: RecordDict) -> Arrays:
        """The plain arrays the handler trains from (sets `hooks` for its training).
        Default: the message's model, plain or a dense payload (`SqueezeStrategy`'s)."""
        self._dense = ARRAYS not in content.array_records
        return self.dense_or_plain(content)

    def send(self, exchange: str, arrays: Arrays, state: RecordDict) -> RecordDict:
        """The records of the reply for the handler's trained arrays (default: the model,
        as it came: plain, or a dense fp32 payload)."""
        if getattr(self, "_dense", False):
            return DenseModelCodec("fp32").encode(arrays)
        return RecordDict({ARRAYS: to_arrayrecord(arrays)})

    def reply_without_training(self, exchange: str, content: RecordDict, state: RecordDict
                               ) -> RecordDict:
        """The reply to an exchange the handler does not train for (`trains` is False)."""
        raise NotImplementedError(f"method {self.method.name!r} trains in exchange "
                                  f"{exchange!r}")

    def metrics(self, exchange: str, state: RecordDict) -> dict[str, float]:
        """Extra metrics of a reply (the same keys on every client)."""
        return {}

    def evaluation(self, content: RecordDict, state: RecordDict) -> dict[str, Arrays]:
        """The models this client evaluates on its local test split, by name: "arrays" (the
        global model of the message, or a personalised method's own) and any other it keeps
        (rows get `accuracy_local_<name>`)."""
        return {ARRAYS: self.dense_or_plain(content)}

    def dense_or_plain(self, content: RecordDict) -> Arrays:
        """The model of a message: a dense-codec payload (a coded method's evaluation
        message) or a plain ArrayRecord."""
        if ARRAYS in content.array_records:
            return plain_arrays(content)
        model = self.method.structure()
        return DenseModelCodec("fp32").decode(content, travelling_keys(model),
                                              expected_shapes(model))


def plain_arrays(content: RecordDict) -> Arrays:
    if ARRAYS not in content.array_records:
        raise CodecError(f"message has no '{ARRAYS}' ArrayRecord")
    return from_arrayrecord(content.array_records[ARRAYS])


class SqueezeStrategy(FedAvg):
    """The server side of a method that codes its own messages: a Flower strategy (it runs
    under Flower's `Strategy.start`), with several exchanges per round, the checks of every
    reply (`replies.py`), and per-client mirrors keyed by `client_key`.

    Aggregation stays Flower's FedAvg unless a method overrides `aggregate_decoded`, run on
    decoded replies in `client_key` order. Replies that failed or could not be decoded are
    recorded in `self.failures` (reset by `configure_train`).
    """

    def __init__(self, method: Method, model: nn.Module, *, fraction_train: float = 1.0,
                 fraction_evaluate: float = 0.0, min_train_nodes: int = 2,
                 min_evaluate_nodes: int = 0, min_available_nodes: int = 2,
                 min_replies: int = 1, max_abs_value: float = 0.0,
                 exchange_timeout: float = 3600.0) -> None:
        super().__init__(fraction_train=fraction_train, fraction_evaluate=fraction_evaluate,
                         min_train_nodes=min_train_nodes, min_evaluate_nodes=min_evaluate_nodes,
                         min_available_nodes=min_available_nodes)
        self.method = method
        self.settings = method.settings
        self.config = method.config
        self.model_codec = DenseModelCodec("fp32")
        self.min_replies, self.max_abs_value = min_replies, max_abs_value
        self.exchange_timeout = exchange_timeout
        self.keys = travelling_keys(model)
        self.shapes = expected_shapes(model)
        self.client_key = lambda node_id: node_id
        self.failures: list[Failure] = []
        self.round_arrays: Arrays = model_arrays(model)
        self._sent: dict[int, str] = {}  # node id -> group id of the message it was sent

    # -- hooks a method overrides -----------------------------------------------------------
    def encode_down(self, server_round: int, node_id: int, arrays: Arrays) -> RecordDict:
        """The content of the train message for one node (default: the dense model)."""
        return self.model_codec.encode(arrays)

    def decode_up(self, server_round: int, node_id: int, content: RecordDict) -> Arrays:
        """The client's model (plain float32 arrays, canonical keys) from its reply."""
        return self.model_codec.decode(content, self.keys, self.shapes)

    def aggregate_decoded(self, server_round: int, replies: list[Message]
                          ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate decoded replies (`client_key` order, at least `min_replies`).

        Each reply's content is {"arrays": ArrayRecord of plain float32 arrays, and its
        metric records}. Default: Flower's FedAvg aggregation.
        """
        return FedAvg.aggregate_train(self, server_round, replies)

    def aggregate_metrics(self, replies: list[Message]) -> MetricRecord:
        """The replies' metrics aggregated as Flower's FedAvg does (for a method that
        aggregates the arrays itself: no average of the models is computed)."""
        return self.train_metrics_aggr_fn([r.content for r in replies], self.weighted_by_key)

    def exchanges(self, server_round: int) -> tuple[str, ...]:
        """Names of the exchanges that run before the train exchange in round t."""
        return ()

    def encode_exchange(self, name: str, server_round: int, node_id: int) -> RecordDict:
        raise NotImplementedError(f"{type(self).__name__} declares no exchange {name!r}")

    def decode_exchange(self, name: str, server_round: int, node_id: int,
                        content: RecordDict) -> Any:
        raise NotImplementedError(f"{type(self).__name__} declares no exchange {name!r}")

    def combine_exchange(self, name: str, server_round: int, decoded: dict[int, Any]) -> None:
        """What the server decides from an exchange's decoded replies (by client key)."""

    def encode_evaluate(self, server_round: int, node_id: int, arrays: Arrays) -> RecordDict:
        """The content of an evaluation message (default: the global model, dense fp32)."""
        return DenseModelCodec("fp32").encode(arrays)

    def begin_round(self, server_round: int, arrays: Arrays) -> None:
        """Called before a round's first message is encoded, with the round's global model."""

    def end_round(self, server_round: int) -> None:
        """Called after a round's last exchange, also when it failed or raised."""

    def round_metrics(self, server_round: int) -> dict[str, Any]:
        """Method-specific keys for this round's row of rounds.jsonl."""
        return {}

    def models_to_evaluate(self, server_round: int) -> dict[str, list[dict[str, np.ndarray]]]:
        """Models besides the global one that the app evaluates on the central test set in
        rounds it evaluates, by name (state dicts as numpy arrays): for a lossy downlink, the
        models clients really train from. Rows get `accuracy_<name>` (mean over the list) and
        `accuracy_<name>_min`."""
        return {}

    def export_state(self) -> ServerState:
        """The strategy's state between rounds as plain arrays + JSON (default: none)."""
        return ServerState()

    def import_state(self, state: ServerState) -> None:
        """Restore what `export_state` wrote (into a freshly built strategy)."""

    def client_state_lost(self, client: int) -> None:
        """This client's `context.state` is gone (its SuperNode restarted, the run was
        resumed, or the server refused its reply): forget what the server mirrors of it, so
        that its next message is a full transfer (a resync). Default: no client mirror."""

    # -- Flower's verbs ----------------------------------------------------------------------
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Sample, run the round's earlier exchanges on `grid`, then the train messages."""
        self.failures, self._sent = [], {}
        self.round_arrays = from_arrayrecord(arrays)
        self.begin_round(server_round, self.round_arrays)
        try:
            node_ids = self._sample(grid, self.fraction_train, self.min_train_nodes)
            for name in self.exchanges(server_round):
                messages = self._messages(name, server_round, node_ids, config)
                replies = list(grid.send_and_receive(messages, timeout=self.exchange_timeout))
                self._silent(name, node_ids, replies)
                node_ids = self._aggregate_exchange(name, server_round, replies)
                if len(node_ids) < self.min_replies:
                    return []
            return self._messages(TRAIN, server_round, node_ids, config)
        except BaseException:
            self.end_round(server_round)
            raise

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Decode every good reply, reject absurd models and metric keys other than the
        round's majority; aggregate the rest (nothing below `min_replies`)."""
        try:
            replies = list(replies)
            decoded: list[Message] = []
            for reply in self._screened(replies):
                node_id = reply.metadata.src_node_id
                problem = weight_problem(reply, self.weighted_by_key)
                if problem:
                    self._fail(node_id, TRAIN, problem)
                    continue
                try:
                    arrays = self.decode_up(server_round, node_id, reply.content)
                except (CodecError, KeyError, ValueError) as err:
                    self._fail(node_id, TRAIN, f"undecodable reply: {err}")
                    continue
                problem = absurd_values(arrays, self.max_abs_value)
                if problem:
                    self._fail(node_id, TRAIN, f"rejected: {problem}")
                    continue
                content = RecordDict({ARRAYS: to_arrayrecord(arrays),
                                      **reply.content.metric_records})
                decoded.append(Message(content=content, metadata=reply.metadata))
            decoded, problems = majority_metric_keys(decoded)
            for reply, reason in problems:
                self._fail(reply.metadata.src_node_id, TRAIN, reason)
            if len(decoded) < self.min_replies:
                return None, None
            decoded.sort(key=lambda r: self.client_key(r.metadata.src_node_id))  # fixed order
            return self.aggregate_decoded(server_round, decoded)
        finally:
            self.end_round(server_round)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """Evaluation messages to `fraction_evaluate` of the nodes (`encode_evaluate`)."""
        if self.fraction_evaluate == 0.0:
            return []
        plain = from_arrayrecord(arrays)
        node_ids = self._sample(grid, self.fraction_evaluate, self.min_evaluate_nodes)
        return [self._message(self.encode_evaluate(server_round, node_id, plain), EVALUATE,
                              server_round, node_id, MessageType.EVALUATE, config)
                for node_id in node_ids]

    # -- the round's plumbing ----------------------------------------------------------------
    def _sample(self, grid: Grid, fraction: float, minimum: int) -> list[int]:
        """Flower's rule (max(int(fraction N), minimum) nodes), in `client_key` order."""
        size = max(int(len(list(grid.get_node_ids())) * fraction), minimum)
        node_ids, _ = sample_nodes(grid, self.min_available_nodes, size)
        return sorted(node_ids, key=self.client_key)

    def _messages(self, name: str, server_round: int, node_ids: list[int],
                  config: ConfigRecord) -> list[Message]:
        messages = []
        for node_id in node_ids:
            if name == TRAIN:
                content = self.encode_down(server_round, node_id, self.round_arrays)
            else:
                content = self.encode_exchange(name, server_round, node_id)
            messages.append(self._message(content, name, server_round, node_id,
                                          MessageType.TRAIN, config))
        return messages

    def _message(self, content: RecordDict, exchange: str, server_round: int, node_id: int,
                 message_type: str, config: ConfigRecord) -> Message:
        if CONFIG_RECORD in content:
            raise ValueError(f"{type(self).__name__}: message content must not carry a "
                             f"'{CONFIG_RECORD}' record (the core attaches the round's config)")
        content[CONFIG_RECORD] = ConfigRecord({**config, "server-round": server_round,
                                               "exchange": exchange,
                                               METHOD_KEY: self.method.name})
        group = f"{server_round}:{exchange}"
        self._sent[node_id] = group
        return Message(fold(content), dst_node_id=node_id, message_type=message_type,
                       group_id=group)

    def _screened(self, replies: list[Message]) -> list[Message]:
        """The replies to this round's messages, once each, their records unfolded."""
        good, problems = screen(replies, self._sent)
        good, malformed = unfold_replies(good)
        for reply, reason in problems + malformed:
            self._fail(reply.metadata.src_node_id, _exchange_of(reply), reason)
        return good

    def _silent(self, exchange: str, node_ids: list[int], replies: list[Message]) -> None:
        answered = {r.metadata.src_node_id for r in replies}
        for node_id in node_ids:
            if node_id not in answered:
                self._fail(node_id, exchange, "no reply")

    def _aggregate_exchange(self, name: str, server_round: int, replies: list[Message]
                            ) -> list[int]:
        """Decode an earlier exchange's replies, hand them to `combine_exchange`; returns the
        node ids that answered well (`client_key` order)."""
        decoded: dict[int, Any] = {}
        nodes: dict[int, int] = {}
        for reply in self._screened(replies):
            node_id = reply.metadata.src_node_id
            try:
                value = self.decode_exchange(name, server_round, node_id, reply.content)
            except (CodecError, KeyError, ValueError) as err:
                self._fail(node_id, name, f"undecodable reply: {err}")
                continue
            if not all_finite(value):
                self._fail(node_id, name, "rejected: non-finite values")
                continue
            decoded[self.client_key(node_id)] = value
            nodes[self.client_key(node_id)] = node_id
        if len(decoded) >= self.min_replies:
            self.combine_exchange(name, server_round, dict(sorted(decoded.items())))
        return [nodes[c] for c in sorted(nodes)]

    def _fail(self, node_id: int, exchange: str, reason: str) -> None:
        log(WARNING, "node %d (%s): %s", node_id, exchange, reason)
        self.failures.append(Failure(node_id, exchange, reason))
        if reason not in ("no reply", NOT_SENT):  # a mirror must not keep what was refused
            self.client_state_lost(self.client_key(node_id))


def _exchange_of(reply: Message) -> str:
    group = reply.metadata.group_id
    return group.split(":", 1)[1] if ":" in group else TRAIN


Method.Strategy = SqueezeStrategy
Method.Client = ClientSide
