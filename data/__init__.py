"""Federated-learning data: dataset loading (torchvision, local files) and partitioning
(flwr-datasets).

The partitioning names are loaded on first use (PEP 562): Hugging Face `datasets` and
flwr-datasets take seconds to import, and a ClientApp process whose partition is already in
the on-disk cache (`partition_cache`) never needs them.
"""

import importlib

from fedsqueeze.data.datasets import (
    DEFAULT_DATASET,
    DatasetInfo,
    dataset_identity,
    dataset_info,
    dataset_names,
    default_data_dir,
    load_split,
    register_dataset,
    to_tensor,
)
from fedsqueeze.data.errors import DataError
from fedsqueeze.data.histogram import format_histogram, label_histogram, plot_histogram
from fedsqueeze.data.partition_cache import cached_partition

_PARTITION_NAMES = frozenset(
    {"LABEL", "PartitionOptions", "partition_for", "partition_indices", "register_scheme",
     "scheme_names"})


def __getattr__(name: str):
    if name in _PARTITION_NAMES:
        partition = importlib.import_module("fedsqueeze.data.partition")
        importlib.import_module("fedsqueeze.data.pairs")  # registers "label-pairs"
        return getattr(partition, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_DATASET",
    "LABEL",
    "DataError",
    "DatasetInfo",
    "cached_partition",
    "PartitionOptions",
    "dataset_identity",
    "dataset_info",
    "dataset_names",
    "default_data_dir",
    "format_histogram",
    "label_histogram",
    "load_split",
    "partition_for",
    "partition_indices",
    "plot_histogram",
    "register_dataset",
    "register_scheme",
    "scheme_names",
    "to_tensor",
]
