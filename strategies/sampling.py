"""Which node holds which partition, and seeded client sampling over partition ids.

The ServerApp only sees random node ids; a node's partition id lives in its node config. The
ServerApp learns the mapping before round 1 and samples with its own generator seeded by
(seed, round), so the same config picks the same clients in both engines and on every rerun
(Flower's `sample_nodes` is unseeded).
"""

from __future__ import annotations

import numpy as np


class ClientDirectory:
    """Node-id <-> partition-id map of the clients, with the example count each reported.

    A restarted SuperNode comes back under a new node id with the same partition id: `add`
    rebinds the partition to it; the old node id still names its partition (for the rows of
    rounds it failed in) but is no longer the partition's node.
    """

    def __init__(self, partition_of_node: dict[int, int],
                 examples: dict[int, int] | None = None) -> None:
        partitions = list(partition_of_node.values())
        duplicates = sorted({p for p in partitions if partitions.count(p) > 1})
        if duplicates:
            raise ValueError(f"several nodes report partition-id {duplicates}: "
                             "each SuperNode needs its own partition-id")
        self._partition_of_node = dict(partition_of_node)
        self._node_of_partition = {p: n for n, p in partition_of_node.items()}
        self._examples = dict(examples or {})

    def __len__(self) -> int:
        return len(self._node_of_partition)

    def partition_of(self, node_id: int) -> int:
        return self._partition_of_node[node_id]

    def get(self, node_id: int) -> int | None:
        """The partition of a node id (also of a former node of it), None if unknown."""
        return self._partition_of_node.get(node_id)

    def node_of(self, partition_id: int) -> int:
        return self._node_of_partition[partition_id]

    def examples_of(self, partition_id: int) -> int | None:
        """The training examples the partition's node reported at discovery."""
        return self._examples.get(partition_id)

    def add(self, node_id: int, partition_id: int, examples: int | None = None) -> bool:
        """Bind a partition to a (new) node; True when it replaces another node (a rejoin)."""
        previous = self._node_of_partition.get(partition_id)
        self._partition_of_node[node_id] = partition_id
        self._node_of_partition[partition_id] = node_id
        if examples is not None:
            self._examples[partition_id] = examples
        return previous is not None and previous != node_id

    @property
    def partition_ids(self) -> list[int]:
        return sorted(self._node_of_partition)

    def sample(self, server_round: int, fraction: float, min_nodes: int, seed: int) -> list[int]:
        """Node ids of the clients of this round, in partition-id order.

        Like Flower's FedAvg: `max(int(fraction * N), min_nodes)` clients, without replacement.
        """
        size = max(int(fraction * len(self)), min_nodes)
        return self.choose(server_round, size, seed)

    def choose(self, server_round: int, size: int, seed: int, *salt: int) -> list[int]:
        """Node ids of `size` clients drawn without replacement by a generator seeded with
        (seed, round, *salt), in partition-id order (all of them when size >= N)."""
        partitions = self.partition_ids
        if size >= len(partitions):
            chosen = partitions
        else:
            rng = np.random.default_rng([seed, server_round, *salt])
            chosen = sorted(rng.choice(partitions, size=size, replace=False).tolist())
        return [self._node_of_partition[p] for p in chosen]
