"""The method contract's classes: `Method`, `ClientSide`, `SqueezeStrategy` (see the package
docstring, `fedsqueeze.strategies`, for the contract itself; a test checks that its
signatures match these classes)."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Mapping
from logging import WARNING
from typing import Any, ClassVar

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.supercore import log
from torch import nn

from fedsqueeze.codecs import CodecError

from .model_codec import DenseModelCodec
from .model_transform import model_transform_of
from .payload import METRICS_RECORD, identity_of
from .sampling import ClientDirectory
from .settings import MethodConfig, RunSettings, UserValue, from_run_config, to_run_config
from .state import ServerState
from .tensors import (
    Arrays,
    expected_shapes,
    from_arrayrecord,
    load_arrays,
    model_arrays,
    to_arrayrecord,
    travelling_keys,
)
from .training import ClientData, sgd_epochs

TRAIN = "train"
EVALUATE = "evaluate"
CONFIG_RECORD = "config"  # the round's config, attached by the core to every message


@dataclasses.dataclass(frozen=True)
class Failure:
    """A reply that did not count: which node, in which exchange, and why."""

    node_id: int
    exchange: str
    reason: str


class Method:
    """One federated method: its config, its server strategy and its client side."""

    name: ClassVar[str]
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    Strategy: ClassVar[type[SqueezeStrategy]]
    Client: ClassVar[type[ClientSide]]
    #: the model transform this method needs ("" = whatever run config `model-transform` says)
    model_transform: ClassVar[str] = ""

    def __init__(self, settings: RunSettings, run_config: Mapping[str, UserValue]) -> None:
        self.settings = settings
        self.config = from_run_config(self.Config, run_config, prefix=self.name)
        self.transform = model_transform_of(settings, run_config, self.model_transform)

    def server(self, model: nn.Module) -> SqueezeStrategy:
        """The Flower strategy that runs this method's server side for `model`."""
        return self.Strategy(self, model)

    def client(self) -> ClientSide:
        """What a client does with this method's messages."""
        return self.Client(self)

    def model_codec(self) -> DenseModelCodec:
        """How the dense default sides carry the whole model (fp32)."""
        return DenseModelCodec("fp32")

    def run_config(self) -> dict[str, UserValue]:
        """This method's keys and values (for config.json)."""
        return to_run_config(self.config, prefix=self.name)


class DownlinkRejected(ValueError):
    """The server's model is non-finite or absurd: training from it would poison the client."""


class ClientSide:
    """The hooks the generic ClientApp calls (see the module docstring). The defaults carry
    the whole model with the method's `model_codec` and train with local SGD."""

    #: the round of the message being handled; set by the ClientApp before any hook runs
    server_round: int = 0

    def __init__(self, method: Method) -> None:
        self.method = method
        self.settings = method.settings
        self.model_codec = method.model_codec()

    def receive(self, content: RecordDict, state: RecordDict, model: nn.Module) -> nn.Module:
        """Decode the server's train message into `model` (in place) and return it."""
        load_arrays(model, self.model_codec.decode(content, travelling_keys(model),
                                                   expected_shapes(model)))
        return model

    def checked(self, model: nn.Module) -> nn.Module:
        """`model` if the server's model it holds is sane (finite, |w| <= max-abs-value), else
        DownlinkRejected. The ClientApp checks what `receive` and `evaluation_model` return;
        an exchange that decodes a model calls it itself."""
        problem = absurd_values(model_arrays(model), self.settings.max_abs_value)
        if problem:
            raise DownlinkRejected(f"downlink rejected: {problem}")
        return model

    def train(self, model: nn.Module, data: ClientData, state: RecordDict, seed: int
              ) -> dict[str, float]:
        """Local SGD with the run's hyper-parameters (lr of this round: lr x lr-decay^(t-1))."""
        s = self.settings
        loss = sgd_epochs(model, data, epochs=s.local_epochs, batch_size=s.batch_size,
                          lr=s.lr_at(self.server_round), momentum=s.momentum,
                          weight_decay=s.weight_decay, seed=seed, after_step=self.after_step)
        return {"train-loss": loss}

    def after_step(self, model: nn.Module) -> None:
        """Called after every optimizer step of the default `train` (sparse methods re-apply
        their masks here)."""

    def send(self, model: nn.Module, state: RecordDict) -> RecordDict:
        """The records (codec payloads) of the train reply."""
        return self.model_codec.encode(model_arrays(model))

    def metrics(self, model: nn.Module, state: RecordDict) -> dict[str, float]:
        """Extra metrics of the train reply (same keys on every client)."""
        return {}

    def exchange(self, name: str, content: RecordDict, state: RecordDict, model: nn.Module,
                 data: ClientData, seed: int) -> RecordDict:
        """The reply to exchange `name` (methods whose strategy declares `exchanges`)."""
        raise NotImplementedError(f"method {self.method.name!r} has no exchange {name!r}")

    def own_models(self, global_model: nn.Module, state: RecordDict, model: nn.Module
                   ) -> dict[str, nn.Module]:
        """Models of this client's own to evaluate beside the global one on its local test
        split, by name (rows get `accuracy_local_<name>`, mean and min); `global_model` is
        what `evaluation_model` returned, `model` a fresh copy to fill. Default: none."""
        return {}

    def evaluation_model(self, content: RecordDict, state: RecordDict, model: nn.Module
                         ) -> nn.Module:
        """The model this client evaluates on its local test split: by default the global
        model of the message (a personalised method returns its own)."""
        load_arrays(model, DenseModelCodec("fp32").decode(content, travelling_keys(model),
                                                          expected_shapes(model)))
        return model


class SqueezeStrategy(FedAvg):
    """Flower's FedAvg with seeded sampling over partition ids, codec payloads, several
    exchanges per round and local evaluation (see the module docstring).

    Aggregation stays Flower's, run on decoded replies in partition-id order. Replies that
    failed or could not be decoded are recorded in `self.failures` (per exchange) for the
    round loop, which fails or skips the round below `min-nodes`.
    """

    def __init__(self, method: Method, model: nn.Module) -> None:
        settings = method.settings
        super().__init__(
            fraction_train=settings.fraction_train,
            fraction_evaluate=0.0,  # central evaluation; local evaluation is our own exchange
            min_train_nodes=settings.min_nodes,
            min_evaluate_nodes=0,
            min_available_nodes=settings.min_nodes,
        )
        self.method = method
        self.settings = settings
        self.config = method.config
        self.model_codec = method.model_codec()
        self.keys = travelling_keys(model)
        self.shapes = expected_shapes(model)
        self.directory: ClientDirectory | None = None
        self.failures: list[Failure] = []
        self.round_arrays: Arrays = model_arrays(model)
        self._sent: dict[str, set[int]] = {}  # exchange -> node ids its messages went to

    # -- hooks a method overrides -----------------------------------------------------------
    def encode_down(self, server_round: int, node_id: int, arrays: Arrays) -> RecordDict:
        """The content of the train message for one node (default: the dense model)."""
        return self.model_codec.encode(arrays)

    def decode_up(self, server_round: int, node_id: int, content: RecordDict) -> Arrays:
        """The client's model (plain float32 arrays, canonical keys) from its reply."""
        return self.model_codec.decode(content, self.keys, self.shapes)

    def aggregate_decoded(self, server_round: int, replies: list[Message]
                          ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate decoded replies (partition-id order, at least `min-nodes` of them).

        Each reply's content is {"arrays": ArrayRecord of plain float32 arrays,
        "metrics": MetricRecord with "num-examples"}. Default: Flower's FedAvg aggregation.
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
        """What the server decides from an exchange's decoded replies (by partition id)."""

    def encode_evaluate(self, server_round: int, node_id: int, arrays: Arrays) -> RecordDict:
        """The content of a local-evaluation message (default: the global model, fp32)."""
        return DenseModelCodec("fp32").encode(arrays)

    def begin_round(self, server_round: int, arrays: Arrays) -> None:
        """Called before a round's first message is encoded, with the round's global model."""

    def end_round(self, server_round: int) -> None:
        """Called after a round's last exchange, also when it failed or raised."""

    def round_metrics(self, server_round: int) -> dict[str, Any]:
        """Method-specific keys for this round's row of rounds.jsonl."""
        return {}

    def models_to_evaluate(self, server_round: int) -> dict[str, list[dict[str, np.ndarray]]]:
        """Models besides the global one that the round loop evaluates on the central test
        set in rounds it evaluates, by name (state dicts as numpy arrays): for a lossy
        downlink, the models clients really train from. Rows get `accuracy_<name>` (mean over
        the list) and `accuracy_<name>_min`."""
        return {}

    def export_state(self) -> ServerState:
        """The strategy's state between rounds as plain arrays + JSON (default: none)."""
        return ServerState()

    def import_state(self, state: ServerState) -> None:
        """Restore what `export_state` wrote (into a freshly built strategy)."""

    def client_state_lost(self, partition_id: int) -> None:
        """This client's `context.state` is gone (its SuperNode restarted under a new node id,
        or the run was resumed): forget what the server mirrors of it, so that its next
        message is a full transfer (a resync). Default: the method keeps no client mirror."""

    # -- the verbs the round loop calls -----------------------------------------------------
    def sample(self, server_round: int) -> list[int]:
        """Node ids of round t's clients (seeded by (seed, t), partition-id order)."""
        if self.directory is None:
            raise RuntimeError("the client directory must be set before round 1")
        return self.directory.sample(server_round, self.fraction_train, self.min_train_nodes,
                                     self.settings.seed)

    def begin(self, server_round: int, arrays: Arrays) -> None:
        self.failures = []
        self._sent = {}
        self.round_arrays = arrays
        self.begin_round(server_round, arrays)

    def end(self, server_round: int) -> None:
        self.end_round(server_round)

    def round_config(self, server_round: int, exchange: str) -> ConfigRecord:
        return ConfigRecord({"server-round": server_round, "exchange": exchange})

    def configure_exchange(self, name: str, server_round: int, node_ids: Iterable[int]
                           ) -> list[Message]:
        """The messages of one exchange, each with the round's config attached."""
        node_ids = list(node_ids)
        self._sent[name] = set(node_ids)
        messages = []
        for node_id in node_ids:
            if name == TRAIN:
                content = self.encode_down(server_round, node_id, self.round_arrays)
            else:
                content = self.encode_exchange(name, server_round, node_id)
            messages.append(self._message(content, name, server_round, node_id,
                                          MessageType.TRAIN))
        return messages

    def _message(self, content: RecordDict, exchange: str, server_round: int, node_id: int,
                 message_type: str) -> Message:
        if CONFIG_RECORD in content:
            raise ValueError(f"{type(self).__name__}: message content must not carry a "
                             f"'{CONFIG_RECORD}' record (the core attaches the round's config)")
        content[CONFIG_RECORD] = self.round_config(server_round, exchange)
        return Message(content, dst_node_id=node_id, message_type=message_type,
                       group_id=f"{server_round}:{exchange}")

    def aggregate_exchange(self, name: str, server_round: int, replies: Iterable[Message]
                           ) -> list[int]:
        """Decode an earlier exchange's replies, hand them to `combine_exchange`; returns the
        node ids that answered well (partition-id order)."""
        decoded: dict[int, Any] = {}
        nodes: dict[int, int] = {}
        for reply, partition_id in self._good_replies(name, server_round, replies):
            node_id = reply.metadata.src_node_id
            try:
                value = self.decode_exchange(name, server_round, node_id, reply.content)
            except (CodecError, KeyError, ValueError) as err:
                self._fail(node_id, name, f"undecodable reply: {err}")
                continue
            if not all_finite(value):
                self._fail(node_id, name, "rejected: non-finite values")
                continue
            decoded[partition_id] = value
            nodes[partition_id] = node_id
        if len(decoded) >= self.settings.min_nodes:
            self.combine_exchange(name, server_round, dict(sorted(decoded.items())))
        return [nodes[p] for p in sorted(nodes)]

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Decode every good reply, reject absurd models, example counts other than the
        node's and metric keys other than the round's majority; aggregate the rest."""
        decoded: list[tuple[int, Message]] = []
        for reply, partition_id in self._good_replies(TRAIN, server_round, replies):
            node_id = reply.metadata.src_node_id
            try:
                arrays = self.decode_up(server_round, node_id, reply.content)
                metrics = reply.content.metric_records[METRICS_RECORD]
            except (CodecError, KeyError, ValueError) as err:
                self._fail(node_id, TRAIN, f"undecodable reply: {err}")
                continue
            problem = (absurd_values(arrays, self.settings.max_abs_value)
                       or self._wrong_example_count(partition_id, metrics))
            if problem:
                self._fail(node_id, TRAIN, f"rejected: {problem}")
                self.client_state_lost(partition_id)  # a mirror must not keep what was refused
                continue
            content = RecordDict({"arrays": to_arrayrecord(arrays), METRICS_RECORD: metrics})
            decoded.append((partition_id, Message(content=content, metadata=reply.metadata)))
        decoded = self._same_metric_keys(decoded)
        if len(decoded) < self.settings.min_nodes:
            return None, None
        decoded.sort(key=lambda item: item[0])  # a fixed summation order
        return self.aggregate_decoded(server_round, [message for _, message in decoded])

    def _wrong_example_count(self, partition_id: int, metrics: MetricRecord) -> str | None:
        """Why a reply's num-examples cannot be its weight (None when it can): it must be the
        count the node reported at discovery (a client cannot weight itself up)."""
        value = metrics.get("num-examples")
        expected = None if self.directory is None else self.directory.examples_of(partition_id)
        if not isinstance(value, (int, float)) or not np.isfinite(value) or value < 1:
            return f"num-examples = {value!r} must be a positive count"
        if expected is not None and value != expected:
            return (f"num-examples = {value!r} differs from the {expected} examples the node "
                    "reported at discovery")
        return None

    def _same_metric_keys(self, decoded: list[tuple[int, Message]]
                          ) -> list[tuple[int, Message]]:
        """Keep the replies whose metric keys are the most common key set of the round (ties:
        the set of the lowest partition id); Flower's aggregation needs one key set."""
        if not decoded:
            return decoded
        keys = {p: frozenset(m.content.metric_records[METRICS_RECORD]) for p, m in decoded}
        counts = Counter(keys.values())
        majority = max(counts, key=lambda k: (counts[k], -min(p for p in keys if keys[p] == k)))
        kept = []
        for partition_id, message in decoded:
            if keys[partition_id] == majority:
                kept.append((partition_id, message))
                continue
            extra, missing = sorted(keys[partition_id] - majority), sorted(majority - keys[
                partition_id])
            self._fail(message.metadata.src_node_id, TRAIN,
                       f"rejected: metric keys differ from the round's (extra {extra}, "
                       f"missing {missing})")
        return kept

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """Local-evaluation messages to `local-eval-clients` clients (seeded; 0 = all)."""
        assert self.directory is not None
        plain = from_arrayrecord(arrays)
        wanted = self.settings.local_eval_clients or len(self.directory)
        node_ids = self.directory.choose(server_round, wanted, self.settings.seed, 1)
        self._sent[EVALUATE] = set(node_ids)
        return [self._message(self.encode_evaluate(server_round, node_id, plain), EVALUATE,
                              server_round, node_id, MessageType.EVALUATE)
                for node_id in node_ids]

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        """`accuracy_local` (mean over clients), `accuracy_local_min`, `loss_local`, and
        `accuracy_local_<name>` (+ `_min`) of the clients' own models."""
        accuracies, losses = [], []
        own: dict[str, list[float]] = {}
        for reply, _ in self._good_replies(EVALUATE, server_round, replies):
            try:
                metrics = reply.content.metric_records[METRICS_RECORD]
                accuracy, loss = float(metrics["accuracy"]), float(metrics["loss"])
                extra = {k[len("accuracy-"):]: float(v) for k, v in metrics.items()
                         if k.startswith("accuracy-")}
            except (KeyError, ValueError, TypeError) as err:
                self._fail(reply.metadata.src_node_id, EVALUATE, f"bad metrics: {err}")
                continue
            if not (0 <= accuracy <= 1 and np.isfinite(loss)
                    and all(0 <= a <= 1 for a in extra.values())):
                self._fail(reply.metadata.src_node_id, EVALUATE,
                           f"rejected: accuracy {accuracy!r} or loss {loss!r} out of range")
                continue
            accuracies.append(accuracy)
            losses.append(loss)
            for name, value in extra.items():
                own.setdefault(name, []).append(value)
        if not accuracies:
            return None
        record = {"accuracy_local": float(np.mean(accuracies)),
                  "accuracy_local_min": float(min(accuracies)),
                  "loss_local": float(np.mean(losses)),
                  "local_evaluations": len(accuracies)}
        for name, values in sorted(own.items()):
            record[f"accuracy_local_{name}"] = float(np.mean(values))
            record[f"accuracy_local_{name}_min"] = float(min(values))
        return MetricRecord(record)

    def _good_replies(self, exchange: str, server_round: int, replies: Iterable[Message]
                      ) -> Iterable[tuple[Message, int]]:
        """The replies that may count, with their partition ids. Rejected (counted once per
        node, with the reason): error replies; replies from a node this exchange was not sent
        to; several replies of one node; replies of another round or exchange; a partition id
        that is not the node's."""
        replies = list(replies)
        expected = self._sent.get(exchange, set())
        group = f"{server_round}:{exchange}"
        per_node = Counter(reply.metadata.src_node_id for reply in replies)
        rejected: set[int] = set()
        for reply in replies:
            node_id = reply.metadata.src_node_id
            if node_id in rejected:
                continue
            problem = None
            if node_id not in expected:
                problem = "a reply from a node this exchange was not sent to"
            elif per_node[node_id] > 1:
                problem = f"{per_node[node_id]} replies to one message"
            elif reply.has_error():
                problem = f"client error: {reply.error.reason}"
            elif reply.metadata.group_id != group:
                problem = f"a reply to {reply.metadata.group_id!r}, not to {group!r}"
            if problem is None:
                try:
                    partition_id = identity_of(reply.content)
                except (CodecError, KeyError, ValueError) as err:
                    problem = f"undecodable reply: {err}"
                else:
                    own = None if self.directory is None else self.directory.get(node_id)
                    if own is not None and partition_id != own:
                        problem = (f"reports partition-id {partition_id}, but the node holds "
                                   f"partition {own}")
            if problem is not None:
                rejected.add(node_id)
                self._fail(node_id, exchange, problem)
                continue
            yield reply, partition_id

    def _fail(self, node_id: int, exchange: str, reason: str) -> None:
        log(WARNING, "node %d (%s): %s", node_id, exchange, reason)
        self.failures.append(Failure(node_id, exchange, reason))


def absurd_values(arrays: Arrays, bound: float) -> str | None:
    """Why a decoded model cannot be aggregated (None when it can): non-finite entries, or
    |w| above `bound` (0 = no bound); a value like 1e38 is finite but breaks every client
    that trains from the average."""
    for key, value in arrays.items():
        value = np.asarray(value)
        finite = np.isfinite(value)
        if not finite.all():
            return f"{int(value.size - finite.sum())} non-finite values in {key!r}"
        largest = float(np.abs(value).max()) if bound and value.size else 0.0
        if largest > bound:
            return f"max |w| = {largest:.3g} in {key!r} exceeds max-abs-value = {bound:g}"
    return None


def all_finite(value: Any) -> bool:
    """Whether every number in a decoded exchange value (numbers, arrays, lists, dicts) is
    finite."""
    if isinstance(value, Mapping):
        return all(all_finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(all_finite(v) for v in value)
    if isinstance(value, (np.ndarray, float, int, np.number)) and not isinstance(value, bool):
        array = np.asarray(value)
        return array.dtype.kind not in "fc" or bool(np.isfinite(array).all())
    return True


Method.Strategy = SqueezeStrategy
Method.Client = ClientSide
