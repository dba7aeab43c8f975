"""The method contract: a server strategy plus a client side, built from run config.

```python
@register("fedavg")
class FedAvgMethod(Method):
    Config = FedAvgConfig                  # frozen dataclass of the `fedavg.*` keys
    def server(self, model) -> SqueezeStrategy: ...
    def client(self) -> ClientSide: ...
```
The generic ServerApp and ClientApp only ever talk to these classes.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from logging import WARNING
from typing import Any, ClassVar

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.supercore import log
from torch import nn

from fedsqueeze.codecs import CodecError

from .payload import METRICS_RECORD, identity_of
from .sampling import ClientDirectory
from .settings import RunSettings, UserValue, from_run_config, to_run_config
from .tensors import expected_shapes, travelling_keys
from .training import ClientData, sgd_epochs


@dataclasses.dataclass(frozen=True)
class NoConfig:
    """A method without keys of its own."""


class Method(ABC):
    """One federated method: its config, its server strategy and its client side."""

    name: ClassVar[str]
    Config: ClassVar[type] = NoConfig

    def __init__(self, settings: RunSettings, run_config: Mapping[str, UserValue]) -> None:
        self.settings = settings
        self.config = from_run_config(self.Config, run_config, prefix=self.name)

    @abstractmethod
    def server(self, model: nn.Module) -> SqueezeStrategy:
        """The Flower strategy that runs this method's server side for `model`."""

    @abstractmethod
    def client(self) -> ClientSide:
        """What a client does with this method's messages."""

    def run_config(self) -> dict[str, UserValue]:
        """This method's keys and values (for config.json)."""
        return to_run_config(self.config, prefix=self.name)


class ClientSide(ABC):
    """Three hooks the generic ClientApp calls: receive, train, send.

    `state` is Flower's `context.state` (a RecordDict that persists across rounds in both
    engines); a method keeps its per-node state there under its own record names.
    """

    def __init__(self, method: Method) -> None:
        self.method = method
        self.settings = method.settings

    @abstractmethod
    def receive(self, content: RecordDict, state: RecordDict, model: nn.Module) -> nn.Module:
        """Decode the server's message into `model` (in place) and return it."""

    def train(self, model: nn.Module, data: ClientData, state: RecordDict, seed: int
              ) -> dict[str, float]:
        """Local SGD with the run's hyper-parameters; override for method-specific training."""
        s = self.settings
        loss = sgd_epochs(model, data, epochs=s.local_epochs, batch_size=s.batch_size, lr=s.lr,
                          momentum=s.momentum, weight_decay=s.weight_decay, seed=seed,
                          after_step=self.after_step)
        return {"train-loss": loss}

    # Called after every optimizer step (sparse methods re-apply their masks there).
    after_step: Callable[[nn.Module], None] | None = None

    @abstractmethod
    def send(self, model: nn.Module, state: RecordDict) -> RecordDict:
        """The records (codec payloads) of the reply; the ClientApp adds metrics and identity."""


class SqueezeStrategy(FedAvg):
    """Flower's FedAvg with seeded sampling over partition ids and codec payloads.

    Subclasses say how the global model is encoded for one node (`encode_down`) and how a reply
    is decoded (`decode_up`); aggregation stays Flower's, run on decoded replies in
    partition-id order. Replies that failed or could not be decoded are recorded in
    `self.failures` for the round loop (which fails or skips the round below `min-nodes`).
    """

    def __init__(self, method: Method, model: nn.Module) -> None:
        settings = method.settings
        super().__init__(
            fraction_train=settings.fraction_train,
            fraction_evaluate=0.0,  # central evaluation only: an extra exchange costs seconds
            min_train_nodes=settings.min_nodes,
            min_evaluate_nodes=0,
            min_available_nodes=settings.min_nodes,
        )
        self.method = method
        self.settings = settings
        self.keys = travelling_keys(model)
        self.shapes = expected_shapes(model)
        self.directory: ClientDirectory | None = None
        self.failures: list[tuple[int, str]] = []

    # -- what a method provides -------------------------------------------------------------
    @abstractmethod
    def encode_down(self, server_round: int, node_id: int, arrays: ArrayRecord,
                    config: ConfigRecord) -> RecordDict:
        """The content of the train message for one node."""

    @abstractmethod
    def decode_up(self, server_round: int, node_id: int, content: RecordDict) -> ArrayRecord:
        """The client's model (plain float32 arrays, canonical keys) from its reply content."""

    def aggregate_decoded(self, server_round: int, replies: list[Message]
                          ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate decoded replies (partition-id order, at least `min-nodes` of them).

        Each reply's content is {"arrays": ArrayRecord of plain float32 arrays,
        "metrics": MetricRecord with "num-examples"}. Default: Flower's FedAvg aggregation.
        """
        return FedAvg.aggregate_train(self, server_round, replies)

    def begin_round(self) -> None:
        """Called before a round's train messages are encoded (reset per-round state)."""

    def end_round(self) -> None:
        """Called after a round's aggregation, also when it failed or raised."""

    def round_metrics(self, server_round: int) -> dict[str, Any]:
        """Method-specific keys for this round's row of rounds.jsonl."""
        return {}

    def models_to_evaluate(self, server_round: int) -> dict[str, list[dict[str, np.ndarray]]]:
        """Models besides the global one that the round loop evaluates on the central test
        set in rounds it evaluates, by name (state dicts as numpy arrays): for a lossy
        downlink, the models clients really train from. Rows get `accuracy_<name>` (mean over
        the list) and `accuracy_<name>_min`."""
        return {}

    # -- Flower's verbs ---------------------------------------------------------------------
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        if self.directory is None:
            raise RuntimeError("the client directory must be set before round 1")
        config["server-round"] = server_round
        self.begin_round()
        node_ids = self.directory.sample(server_round, self.fraction_train,
                                         self.min_train_nodes, self.settings.seed)
        return [
            Message(self.encode_down(server_round, node_id, arrays, config),
                    dst_node_id=node_id, message_type=MessageType.TRAIN,
                    group_id=str(server_round))
            for node_id in node_ids
        ]

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        try:
            return self._decode_and_aggregate(server_round, replies)
        finally:
            self.end_round()

    def _decode_and_aggregate(self, server_round: int, replies: Iterable[Message]
                              ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        self.failures = []
        decoded: list[tuple[int, Message]] = []
        for reply in replies:
            node_id = reply.metadata.src_node_id
            if reply.has_error():
                self._fail(node_id, f"client error: {reply.error.reason}")
                continue
            try:
                partition_id = identity_of(reply.content)
                arrays = self.decode_up(server_round, node_id, reply.content)
                metrics = reply.content.metric_records[METRICS_RECORD]
            except (CodecError, KeyError, ValueError) as err:
                self._fail(node_id, f"undecodable reply: {err}")
                continue
            content = RecordDict({"arrays": arrays, METRICS_RECORD: metrics})
            decoded.append((partition_id, Message(content=content, metadata=reply.metadata)))
        if len(decoded) < self.settings.min_nodes:
            return None, None
        decoded.sort(key=lambda item: item[0])  # a fixed summation order
        return self.aggregate_decoded(server_round, [message for _, message in decoded])

    def _fail(self, node_id: int, reason: str) -> None:
        log(WARNING, "node %d: %s", node_id, reason)
        self.failures.append((node_id, reason))

