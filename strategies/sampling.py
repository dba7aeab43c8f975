"""Which node holds which partition, and seeded client sampling over partition ids.

The ServerApp only sees random node ids; a node's partition id lives in its node config. The
ServerApp learns the mapping before round 1 and samples with its own generator seeded by
(seed, round), so the same config picks the same clients in both engines and on every rerun
(Flower's `sample_nodes` is unseeded).
"""

from __future__ import annotations

import numpy as np


class ClientDirectory:
    """Bidirectional node-id <-> partition-id map of the connected clients."""

    def __init__(self, partition_of_node: dict[int, int]) -> None:
        partitions = list(partition_of_node.values())
        duplicates = sorted({p for p in partitions if partitions.count(p) > 1})
        if duplicates:
            raise ValueError(f"several nodes report partition-id {duplicates}: "
                             "each SuperNode needs its own partition-id")
        self._partition_of_node = dict(partition_of_node)
        self._node_of_partition = {p: n for n, p in partition_of_node.items()}

    def __len__(self) -> int:
        return len(self._partition_of_node)

    def partition_of(self, node_id: int) -> int:
        return self._partition_of_node[node_id]

    def node_of(self, partition_id: int) -> int:
        return self._node_of_partition[partition_id]

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
