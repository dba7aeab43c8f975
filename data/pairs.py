"""The deterministic non-IID(k) split of FedSparsify's reference setting ("label-pairs").

Sort the training set by label (stable: ties keep the original row order), cut it into
`num_partitions * k` chunks of `floor(N / (num_partitions * k))` rows, then give each client,
in turn, the first still-unassigned chunks whose labels it does not hold yet, until it has k.
For FashionMNIST with 10 clients and k = 2 that is 20 chunks of 3000 (two per class): clients
0 and 1 get classes {0, 1} (chunks {0, 2} and {1, 3}), clients 2 and 3 get {2, 3}, ...;
6000 samples each. No randomness: the seed is ignored.

Rows left over by the floor (fewer than `num_partitions * k`) belong to no client. A chunk
that no client can take (its labels collide with everything left) is an error, not a silent
loss of data.
"""

from __future__ import annotations

import numpy as np
from datasets import Dataset
from flwr_datasets.partitioner import Partitioner

from fedsqueeze.data.errors import DataError
from fedsqueeze.data.partition import LABEL, PartitionOptions, register_scheme

ORIGINAL_ROW = "idx"  # the column holding original row numbers (see partition.py), if any


def label_pairs_assignment(labels: np.ndarray, num_partitions: int, chunks_per_partition: int = 2,
                           rows: np.ndarray | None = None) -> list[np.ndarray]:
    """Positions (into `labels`) of each partition's rows, sorted.

    `rows` (optional) are the original row numbers used to break label ties, so the result
    does not depend on the order the rows come in.
    """
    labels = np.asarray(labels).reshape(-1)
    n = len(labels)
    k = chunks_per_partition
    if num_partitions < 1 or k < 1:
        raise DataError(f"label-pairs needs num-partitions >= 1 and classes >= 1, "
                        f"got {num_partitions} and {k}")
    chunk = n // (num_partitions * k)
    if chunk == 0:
        raise DataError(f"label-pairs: {n} samples cannot make {num_partitions * k} chunks")
    ties = np.arange(n) if rows is None else np.asarray(rows).reshape(-1)
    order = np.lexsort((ties, labels))  # by label, then by original row
    chunks = [order[i * chunk:(i + 1) * chunk] for i in range(num_partitions * k)]
    chunk_labels = [set(np.unique(labels[c]).tolist()) for c in chunks]
    free = list(range(len(chunks)))
    parts: list[np.ndarray] = []
    for pid in range(num_partitions):
        held: set = set()
        taken: list[int] = []
        for c in free:
            if len(taken) == k:
                break
            if not held & chunk_labels[c]:
                taken.append(c)
                held |= chunk_labels[c]
        if len(taken) < k:
            raise DataError(f"label-pairs: partition {pid} finds only {len(taken)} chunks with "
                            f"labels it does not hold yet (needs {k})")
        free = [c for c in free if c not in taken]
        parts.append(np.sort(np.concatenate([chunks[c] for c in taken])))
    return parts


class LabelPairsPartitioner(Partitioner):
    """flwr-datasets partitioner for the deterministic sorted-chunk split (see module doc)."""

    def __init__(self, num_partitions: int, partition_by: str = LABEL,
                 chunks_per_partition: int = 2) -> None:
        super().__init__()
        if num_partitions < 1:
            raise ValueError(f"num_partitions must be >= 1, got {num_partitions}")
        self._num_partitions = num_partitions
        self._partition_by = partition_by
        self._chunks = chunks_per_partition
        self._parts: list[np.ndarray] | None = None

    @property
    def num_partitions(self) -> int:
        return self._num_partitions

    def _assign(self) -> list[np.ndarray]:
        if self._parts is None:
            data = self.dataset.with_format("numpy")
            labels = np.asarray(data[self._partition_by])
            rows = np.asarray(data[ORIGINAL_ROW]) if ORIGINAL_ROW in data.column_names else None
            self._parts = label_pairs_assignment(labels, self._num_partitions, self._chunks, rows)
        return self._parts

    def load_partition(self, partition_id: int) -> Dataset:
        if not 0 <= partition_id < self._num_partitions:
            raise ValueError(f"partition_id {partition_id} out of range "
                             f"0..{self._num_partitions - 1}")
        return self.dataset.select(self._assign()[partition_id])


@register_scheme("label-pairs")
def _label_pairs(labels: np.ndarray, num_partitions: int, seed: int, options: PartitionOptions
                 ) -> Partitioner:
    return LabelPairsPartitioner(num_partitions, LABEL, options.classes_per_partition)
