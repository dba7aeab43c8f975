"""Federated-learning data: dataset loading (torchvision, local files) and partitioning
(flwr-datasets)."""

from fedsqueeze.data.datasets import (
    DEFAULT_DATASET,
    DatasetInfo,
    dataset_info,
    dataset_names,
    default_data_dir,
    load_split,
    register_dataset,
    to_tensor,
)
from fedsqueeze.data.errors import DataError
from fedsqueeze.data.histogram import format_histogram, label_histogram, plot_histogram
from fedsqueeze.data.partition import (
    LABEL,
    PartitionOptions,
    partition_for,
    partition_indices,
    register_scheme,
    scheme_names,
)
from fedsqueeze.data import pairs as _pairs  # noqa: F401  (registers "label-pairs")

__all__ = [
    "DEFAULT_DATASET",
    "LABEL",
    "DataError",
    "DatasetInfo",
    "PartitionOptions",
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
