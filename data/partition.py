"""Seeded client partitions of a labelled dataset, computed with flwr-datasets partitioners.

The partitioners run on an in-memory, labels-only Hugging Face `Dataset` whose "idx" column
holds the original row numbers, so each partition comes back as an index array into the real
dataset. As in `FederatedDataset(shuffle=True, seed=seed)`, rows are shuffled with the seed
before partitioning (without it `IidPartitioner` would hand out contiguous blocks).

Schemes are registered by name with `register_scheme`; a scheme is a function that builds a
flwr-datasets `Partitioner` (partitioning by the column `LABEL`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
from datasets import Dataset
from flwr_datasets.partitioner import (
    DirichletPartitioner,
    IidPartitioner,
    Partitioner,
    PathologicalPartitioner,
    ShardPartitioner,
)

from fedsqueeze.data.errors import DataError

LABEL = "label"
_IDX = "idx"
CLASS_ASSIGNMENTS = ("random", "deterministic", "first-deterministic")
# DirichletPartitioner resamples until every partition has this many samples (capped for
# small datasets, see `_dirichlet`), so no client ends up with nothing to train on.
DIRICHLET_MIN_PARTITION_SIZE = 10


@dataclass(frozen=True)
class PartitionOptions:
    """Scheme parameters; each scheme reads (and validates) the ones it uses."""

    classes_per_partition: int = 2
    class_assignment: str = "random"
    alpha: float = 0.5
    shards_per_partition: int = 2
    shard_size: int = 20


SchemeFactory = Callable[[np.ndarray, int, int, PartitionOptions], Partitioner]
"""(labels, num_partitions, seed, options) -> an unfitted Partitioner."""

_SCHEMES: dict[str, SchemeFactory] = {}


def register_scheme(name: str) -> Callable[[SchemeFactory], SchemeFactory]:
    def decorate(factory: SchemeFactory) -> SchemeFactory:
        if _SCHEMES.setdefault(name, factory) is not factory:
            raise ValueError(f"partition scheme {name!r} is already registered")
        return factory

    return decorate


def scheme_names() -> list[str]:
    return sorted(_SCHEMES)


@register_scheme("iid")
def _iid(
    labels: np.ndarray, num_partitions: int, seed: int, options: PartitionOptions
) -> Partitioner:
    return IidPartitioner(num_partitions)


@register_scheme("pathological")
def _pathological(
    labels: np.ndarray, num_partitions: int, seed: int, options: PartitionOptions
) -> Partitioner:
    num_classes = len(np.unique(labels))
    if not 1 <= options.classes_per_partition <= num_classes:
        raise DataError(
            f"classes-per-partition must be in 1..{num_classes} (the classes in the data), "
            f"got {options.classes_per_partition}"
        )
    if options.class_assignment not in CLASS_ASSIGNMENTS:
        raise DataError(
            f"unknown class-assignment {options.class_assignment!r}; "
            f"valid values: {', '.join(CLASS_ASSIGNMENTS)}"
        )
    return PathologicalPartitioner(
        num_partitions,
        LABEL,
        options.classes_per_partition,
        class_assignment_mode=options.class_assignment,  # type: ignore[arg-type]
        shuffle=False,  # the indices come back sorted anyway
        seed=seed,
    )


@register_scheme("dirichlet")
def _dirichlet(
    labels: np.ndarray, num_partitions: int, seed: int, options: PartitionOptions
) -> Partitioner:
    if not options.alpha > 0:
        raise DataError(f"alpha must be > 0, got {options.alpha}")
    min_size = max(1, min(DIRICHLET_MIN_PARTITION_SIZE, len(labels) // (2 * num_partitions)))
    return DirichletPartitioner(
        num_partitions,
        LABEL,
        float(options.alpha),
        min_partition_size=min_size,
        self_balancing=False,
        shuffle=False,
        seed=seed,
    )


@register_scheme("shards")
def _shards(
    labels: np.ndarray, num_partitions: int, seed: int, options: PartitionOptions
) -> Partitioner:
    """The pathological shard split of LotteryFL / FedDST: rows sorted by label, cut into
    shards of `shard_size`, `shards_per_partition` random shards per client (rows beyond
    num_partitions x shards x size are unused)."""
    need = num_partitions * options.shards_per_partition * options.shard_size
    if options.shards_per_partition < 1 or options.shard_size < 1:
        raise DataError("shards-per-partition and shard-size must be >= 1, got "
                        f"{options.shards_per_partition} and {options.shard_size}")
    if need > len(labels):
        raise DataError(f"{num_partitions} partitions x {options.shards_per_partition} shards "
                        f"x {options.shard_size} rows need {need} rows, the data has "
                        f"{len(labels)}")
    return ShardPartitioner(
        num_partitions,
        LABEL,
        num_shards_per_partition=options.shards_per_partition,
        shard_size=options.shard_size,
        shuffle=True,
        seed=seed,
    )


@dataclass(eq=False)
class _LabelsKey:
    """Hashable by content, so equal label arrays share one cache entry."""

    labels: np.ndarray
    digest: str = field(init=False)

    def __post_init__(self) -> None:
        self.digest = hashlib.blake2b(self.labels.tobytes(), digest_size=16).hexdigest()

    def __hash__(self) -> int:
        return hash(self.digest)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _LabelsKey) and other.digest == self.digest


class _Fitted:
    """A partitioner with its dataset assigned; remembers the partitions it was asked for."""

    def __init__(self, partitioner: Partitioner, labels: np.ndarray, seed: int) -> None:
        order = np.random.default_rng(seed).permutation(len(labels))
        # Arrow format: the partitioners' `np.array(dataset[LABEL])` is then a fast
        # conversion rather than a row-by-row iteration (datasets 4.x `Column`).
        dataset = Dataset.from_dict({LABEL: labels[order], _IDX: order}).with_format("arrow")
        partitioner.dataset = dataset
        self._partitioner = partitioner
        self._indices: dict[int, np.ndarray] = {}

    def indices(self, partition_id: int) -> np.ndarray:
        if partition_id not in self._indices:
            try:
                part = self._partitioner.load_partition(partition_id)
            except ValueError as err:  # flwr-datasets' own checks (e.g. too few samples)
                raise DataError(f"cannot partition the data: {err}") from err
            indices = np.sort(part[_IDX].to_numpy().astype(np.int64))
            indices.flags.writeable = False
            self._indices[partition_id] = indices
        return self._indices[partition_id]


@lru_cache(maxsize=16)
def _fitted(
    key: _LabelsKey, scheme: str, num_partitions: int, seed: int, options: PartitionOptions
) -> _Fitted:
    return _Fitted(_SCHEMES[scheme](key.labels, num_partitions, seed, options), key.labels, seed)


def _fitted_for(
    labels: np.ndarray, scheme: str, num_partitions: int, seed: int, options: PartitionOptions
) -> _Fitted:
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    if labels.ndim != 1 or len(labels) == 0:
        raise DataError(f"labels must be a non-empty 1-D array, got shape {labels.shape}")
    if scheme not in _SCHEMES:
        raise DataError(
            f"unknown partition scheme {scheme!r}; valid values: {', '.join(scheme_names())}"
        )
    if not 1 <= num_partitions <= len(labels):
        raise DataError(
            f"num-partitions must be in 1..{len(labels)} (the number of samples), "
            f"got {num_partitions}"
        )
    return _fitted(_LabelsKey(labels), scheme, num_partitions, seed, options)


def partition_indices(
    labels: np.ndarray,
    scheme: str,
    num_partitions: int,
    seed: int,
    *,
    classes_per_partition: int = 2,
    class_assignment: str = "random",
    alpha: float = 0.5,
    shards_per_partition: int = 2,
    shard_size: int = 20,
) -> list[np.ndarray]:
    """Sorted, read-only int64 row indices of every partition.

    The same arguments give the same partitions on every machine; results are cached per
    process (a ClientApp process asks on every message).
    """
    options = PartitionOptions(classes_per_partition, class_assignment, alpha,
                               shards_per_partition, shard_size)
    fitted = _fitted_for(labels, scheme, num_partitions, seed, options)
    return [fitted.indices(i) for i in range(num_partitions)]


def partition_for(labels: np.ndarray, partition_id: int, scheme: str, num_partitions: int,
                  seed: int, **options: Any) -> np.ndarray:
    """One client's row indices, `partition_indices(...)[partition_id]` without the others;
    `options`: the keyword arguments of `partition_indices` (`PartitionOptions`' fields)."""
    if not 0 <= partition_id < num_partitions:
        raise DataError(
            f"partition-id {partition_id} out of range for num-partitions {num_partitions}"
        )
    return _fitted_for(labels, scheme, num_partitions, seed,
                       PartitionOptions(**options)).indices(partition_id)
