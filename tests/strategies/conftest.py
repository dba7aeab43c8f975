"""Shared drivers of the strategies' tests.

- `client_round`: a method's client side driven as `method_mod` and fedsqueeze's handler drive
  it, one message at a time: receive into a model, local training honouring the hooks, send.
- `channel_loop`: channels driven as users drive them: `Compressed` around a Flower strategy
  (FedAvg recording what it aggregates, by default) on the server, `compression_mod` before a
  user's handler on each client, messages serialized as on the wire (`InProcessGrid`). The
  handler adds a seeded random update to what it received.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy import FedAvg

from fedsqueeze.deploy.inprocess import InProcessGrid
from fedsqueeze.strategies.compressed import Compressed
from fedsqueeze.strategies.mods import ERROR, compression_mod
from fedsqueeze.strategies.state import load_array_list
from fedsqueeze.strategies.tensors import load_arrays, model_arrays
from fedsqueeze.strategies.training import local_training


class ClientRound:
    @staticmethod
    def receive(client, content, state, model, exchange="train"):
        load_arrays(model, client.receive(exchange, content, state))
        return model

    @staticmethod
    def train(client, model, data, seed):
        return local_training(model, data, client.settings, client.server_round, seed,
                              client.hooks)

    @staticmethod
    def send(client, model, state, exchange="train"):
        return client.send(exchange, model_arrays(model), state)


@pytest.fixture
def client_round():
    return ClientRound


F = np.float32
SHAPES = [(300, 40), (40,), (40, 10), (10,)]


class Recorder(FedAvg):
    """FedAvg that keeps the decoded replies it aggregates."""

    def __init__(self) -> None:
        super().__init__(fraction_evaluate=0.0, min_available_nodes=1, min_train_nodes=1)
        self.aggregated: list[dict[int, list[np.ndarray]]] = []

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        self.aggregated.append({r.metadata.src_node_id: [a.numpy() for a in
                                                         r.content["arrays"].values()]
                                for r in replies})
        return super().aggregate_train(server_round, replies)


@dataclasses.dataclass
class Exchange:
    """What one round showed: per node the arrays its handler received, its update (local -
    received, as the client computes it) and what the server decoded; the server's model
    before and after."""

    received: dict[int, list[np.ndarray]]
    update: dict[int, list[np.ndarray]]
    decoded: dict[int, list[np.ndarray]]
    replies: list[Message]
    before: list[np.ndarray]
    after: list[np.ndarray]


class ChannelLoop:
    """`boost`: client index -> factor its update is scaled by (a scaled, hostile update)."""

    def __init__(self, uplink, downlink, clients: int = 1, seed: int = 0, scale: float = 0.01,
                 inner=None, boost: dict[int, float] | None = None, **options):
        self.rng = np.random.default_rng(seed)
        self.scale = scale
        self.inner = Recorder() if inner is None else inner
        self.strategy = Compressed(self.inner, uplink, downlink, seed=seed, **options)
        boosted = {7919 * (i + 1): f for i, f in (boost or {}).items()}  # InProcessGrid ids
        self.seen: dict[int, list[np.ndarray]] = {}
        self.added: dict[int, list[np.ndarray]] = {}
        app = ClientApp(mods=[compression_mod])

        @app.train()
        def train(msg, context):
            arrays = [a.numpy() for a in msg.content["arrays"].values()]
            factor = boosted.get(context.node_id, 1.0)
            update = [(self.rng.standard_normal(a.shape) * self.scale * factor).astype(F)
                      for a in arrays]
            # the update as the client's mod computes it: local - received, in float32
            self.seen[context.node_id] = arrays
            self.added[context.node_id] = [np.subtract(np.add(a, u, dtype=F), a, dtype=F)
                                           for a, u in zip(arrays, update)]
            local = ArrayRecord({k: Array(np.add(a, u, dtype=F)) for k, a, u in
                                 zip(msg.content["arrays"].keys(), arrays, update)})
            return Message(RecordDict({"arrays": local,
                                       "metrics": MetricRecord({"num-examples": 10})}),
                           reply_to=msg)

        self.grid = InProcessGrid({}, clients, clientapp=app)
        self.arrays = ArrayRecord([(self.rng.standard_normal(s) * 0.1).astype(F)
                                   for s in SHAPES])
        self.round = 0

    def state(self, index: int = 0) -> RecordDict:
        return list(self.grid.contexts.values())[index].state

    def assert_error_memory_is_exact(self, channel, rounds: int) -> None:
        """Over `rounds` rounds of one client: its error memory is exactly what it owed (its
        update plus the memory before) minus what `channel` delivered, in float32."""
        previous = None
        for _ in range(rounds):
            exchange = self.run_round()
            (node,) = exchange.decoded
            sent = channel.decode(exchange.replies[0].content, [a.shape for a in exchange.before])
            memory = load_array_list(self.state(), ERROR)[0]
            owed = exchange.update[node] if previous is None else [
                np.add(u, e, dtype=F) for u, e in zip(exchange.update[node], previous)]
            assert all(np.array_equal(m, np.subtract(o, s, dtype=F))
                       for m, o, s in zip(memory, owed, sent))
            previous = memory

    def run_round(self) -> Exchange:
        self.round += 1
        before = [a.numpy() for a in self.arrays.values()]
        messages = self.strategy.configure_train(self.round, self.arrays, ConfigRecord(),
                                                 self.grid)
        replies = list(self.grid.send_and_receive(messages))
        arrays, _ = self.strategy.aggregate_train(self.round, replies)
        if arrays is not None:
            self.arrays = arrays
        recorded = getattr(self.inner, "aggregated", None)
        return Exchange(dict(self.seen), dict(self.added), recorded[-1] if recorded else {},
                        replies, before,
                        [a.numpy() for a in self.arrays.values()])


@pytest.fixture
def channel_loop(flower_task):
    return ChannelLoop
