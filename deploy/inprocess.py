"""An in-process federation: the real ServerApp round loop and the real ClientApp in one
process, no Flower processes (method tests and quick checks; deterministic).

`InProcessGrid` is a Flower `Grid` whose nodes are `Context`s in memory: a pushed message is
serialized to protobuf and back (as on the wire), handed to the ClientApp at once, and its
reply (or, when the ClientApp raises, an error reply with the node's `context.state` rolled
back, as Flower does) waits to be pulled. `Federation` builds a run from run config exactly
as the ServerApp does and steps it round by round::

    fed = Federation({"method": "resfed", "num-server-rounds": 5}, clients=4, results_dir=tmp)
    fed.run_round()                       # round 1; fed.rows[-1] is its rounds.jsonl row
    fed.state_of(partition_id)            # that client's context.state
    fed.grid.tamper = lambda reply: ...   # rewrite replies on their way to the server
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from flwr.common.serde import (
    message_from_proto,
    message_to_proto,
    recorddict_from_proto,
    recorddict_to_proto,
)
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore.task_identity import TaskIdentity

from fedsqueeze.client.app import app as default_clientapp
from fedsqueeze.server.app import start_run

from .config_check import checked_run_config, find_app_dir

SERVER_NODE_ID = 1


def copy_recorddict(record: RecordDict) -> RecordDict:
    return recorddict_from_proto(recorddict_to_proto(record))


def _over_the_wire(message: Message) -> Message:
    return message_from_proto(message_to_proto(message))


class InProcessGrid(Grid):
    """Nodes as in-memory Contexts; node ids are not partition ids (as with real nodes)."""

    def __init__(self, run_config: dict, clients: int, clientapp: ClientApp | None = None
                 ) -> None:
        if TaskIdentity._run_id is None:  # what a ServerApp process has; Messages need it
            TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = \
                1, SERVER_NODE_ID, 1
        self.clientapp = clientapp or default_clientapp
        self.run_config = run_config
        self.contexts: dict[int, Context] = {
            7919 * (p + 1): Context(run_id=1, node_id=7919 * (p + 1),
                                    node_config={"partition-id": p, "num-partitions": clients},
                                    state=RecordDict(), run_config=run_config)
            for p in range(clients)}
        self.silent: set[int] = set()  # node ids that never answer
        self.fail: set[int] = set()    # partition ids whose ClientApp raises
        # rewrites each reply on its way to the server: None loses it, a list delivers
        # several replies (duplicates, forgeries) for the one message
        self.tamper: Callable[[Message], Message | list[Message] | None] | None = None
        self._ids = itertools.count(1)
        self._replies: dict[str, list[Message]] = {}
        self._restarts = 0

    def node_of(self, partition_id: int) -> int:
        """The current node id of a partition (a restart gives it a new one)."""
        for node_id, context in self.contexts.items():
            if context.node_config["partition-id"] == partition_id:
                return node_id
        raise KeyError(f"no node holds partition {partition_id}")

    def restart(self, partition_id: int) -> int:
        """The partition's SuperNode restarts: a new node id, an empty `context.state`."""
        old = self.node_of(partition_id)
        context = self.contexts.pop(old)
        self._restarts += 1
        new = 104729 * self._restarts + old
        self.contexts[new] = Context(run_id=1, node_id=new, node_config=context.node_config,
                                     state=RecordDict(), run_config=self.run_config)
        return new

    # -- Grid -----------------------------------------------------------------------------
    @property
    def run(self):  # pragma: no cover - the round loop never asks
        raise NotImplementedError

    def set_run(self, run_id: int) -> None:  # pragma: no cover
        raise NotImplementedError

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None
                       ) -> Message:  # pragma: no cover - deprecated in Flower
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            message_id = f"m{next(self._ids)}"
            message.metadata.__dict__["_message_id"] = message_id
            message.metadata.__dict__["_src_node_id"] = SERVER_NODE_ID
            message.metadata.__dict__["_run_id"] = 1
            ids.append(message_id)
            node_id = message.metadata.dst_node_id
            if node_id in self.silent or node_id not in self.contexts:
                continue
            reply = self._handle(self.contexts[node_id], _over_the_wire(message))
            replies = [reply] if self.tamper is None else self.tamper(reply)
            if isinstance(replies, Message):
                replies = [replies]
            if replies:
                self._replies[message_id] = [_over_the_wire(r) for r in replies]
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [reply for i in list(message_ids) if i in self._replies
                for reply in self._replies.pop(i)]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None
                         ) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))

    def _handle(self, context: Context, message: Message) -> Message:
        saved = copy_recorddict(context.state)
        try:
            if context.node_config["partition-id"] in self.fail:
                raise RuntimeError("fault injected by the in-process grid")
            reply = self.clientapp(message, context)
        except Exception as err:  # what Flower does: error reply, state changes discarded
            context.state = saved
            return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                                 reason=f"{type(err).__name__}: {err}"), reply_to=message)
        reply.metadata.__dict__["_src_node_id"] = context.node_id
        return reply


class Federation:
    """A run of the app in this process, stepped round by round."""

    def __init__(self, overrides: dict[str, Any], clients: int, results_dir: Path,
                 run_name: str = "inprocess") -> None:
        run_config = checked_run_config(find_app_dir(), {
            "results-dir": str(results_dir), "run-name": run_name, "engine": "simulation",
            "round-timeout": 1.0,  # every reply is there at once: a missing one never comes
            **overrides})
        self.run_config = run_config
        self.grid = InProcessGrid(run_config, clients)
        self.runner, self.arrays = start_run(self.grid, run_config, run_id=1)
        self.round = self.runner.first_round - 1  # a resumed run continues after its checkpoint

    @property
    def strategy(self) -> Strategy:
        return self.runner.strategy

    @property
    def rows(self) -> list[dict[str, Any]]:
        return self.runner.writer.rows

    def run_round(self) -> dict[str, Any]:
        """The next round; returns its row of rounds.jsonl."""
        self.round += 1
        self.arrays = self.runner.run_round(self.round, self.arrays)
        return self.rows[-1]

    def run(self, rounds: int) -> list[dict[str, Any]]:
        return [self.run_round() for _ in range(rounds)]

    def state_of(self, partition_id: int) -> RecordDict:
        return self.grid.contexts[self.grid.node_of(partition_id)].state

    def restart_clients(self) -> None:
        """Every client's state survives only in serialized form (new ClientApp processes)."""
        for context in self.grid.contexts.values():
            context.state = copy_recorddict(context.state)
