"""What a client process sets up once: its device, its threads, its partition as tensors."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from logging import INFO

import numpy as np
import torch
from flwr.supercore import log

from fedsqueeze.data import (
    DataError,
    dataset_identity,
    default_data_dir,
    load_split,
    to_tensor,
)
from fedsqueeze.data.partition_cache import cached_partition, partition_key
from fedsqueeze.strategies.settings import RunSettings
from fedsqueeze.strategies.training import ClientData


@functools.cache
def pick_device(preference: str) -> torch.device:
    """`cuda` when asked for or available (`auto`), else `cpu`; logged once per process."""
    if preference == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("client-device = cuda but torch.cuda.is_available() is False")
    use_cuda = preference == "cuda" or (preference == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_cuda else "cpu")
    log(INFO, "client device: %s", describe_device(device))
    return device


def describe_device(device: torch.device) -> str:
    """`cpu`, or `cuda:<index> (<name>; CUDA_VISIBLE_DEVICES=<ids>)`: the pinning says which
    physical GPU a SuperNode's `cuda:0` is (bench/gpu_check.sh checks it)."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "(all)")
        return f"cuda:{index} ({torch.cuda.get_device_name(index)}; CUDA_VISIBLE_DEVICES={visible})"
    return "cpu"


def engine_name() -> str:
    """Ray's simulation engine runs ClientApps inside Ray workers; deployment never imports Ray."""
    return "simulation" if "ray" in sys.modules else "deployment"


def partition_identity(node_config: dict, settings: RunSettings) -> tuple[int, int]:
    """(partition-id, num-partitions) from node config; run config may fix num-partitions."""
    if "partition-id" not in node_config:
        raise DataError("node config has no 'partition-id': start the SuperNode with "
                        "--node-config \"partition-id=<i> num-partitions=<N>\"")
    num_partitions = settings.num_partitions or node_config.get("num-partitions")
    if num_partitions is None:
        raise DataError("num-partitions is set neither in node config nor in run config")
    return int(node_config["partition-id"]), int(num_partitions)


# Set by a process that forks ClientApps (the warm worker) in each child it forks: called with
# (settings, partition id, number of partitions) when that child read a partition into CPU
# memory, so the forking process can `preload` it for the children it forks next.
partition_loaded: Callable[[RunSettings, int, int], None] | None = None

# Set by a process that forks ClientApps (the warm worker) in each child it forks: held while
# that child reads a partition (the dataset, the partitioner and the conversion: the
# memory-heavy part of a task), so that a host's many first tasks read a few at a time.
reading_gate: Callable[[], AbstractContextManager[object]] = contextlib.nullcontext


def preload(settings: RunSettings, partition_id: int, num_partitions: int) -> None:
    """Read a partition into this process's CPU cache: processes forked from this one then
    find it there (shared copy-on-write pages, which training only reads)."""
    _client_data(settings, partition_id, num_partitions, torch.device("cpu"))


@functools.lru_cache(maxsize=4)
def _client_data(settings: RunSettings, partition_id: int, num_partitions: int,
                 device: torch.device) -> tuple[ClientData, ClientData | None]:
    options = settings.partition_options()

    def compute() -> tuple[np.ndarray, np.ndarray]:
        from fedsqueeze.data import partition_for  # flwr-datasets: only on a cache miss

        images, labels = load_split(settings.dataset, "train", settings.data_dir or None,
                                    download=settings.data_download)
        indices = partition_for(labels, partition_id, scheme=settings.partitioner,
                                num_partitions=num_partitions, seed=settings.seed, **options)
        return images[indices], labels[indices]

    key = partition_key(dataset=settings.dataset, loader=dataset_identity(settings.dataset),
                        split="train",
                        data_dir=str(settings.data_dir or default_data_dir()),
                        scheme=settings.partitioner, num_partitions=num_partitions,
                        partition_id=partition_id, seed=settings.seed, **options)

    def tensors(idx: np.ndarray) -> ClientData:
        x = to_tensor(images[idx], scale=settings.input_scale).to(device)
        y = torch.from_numpy(labels[idx]).long().to(device)
        return ClientData(partition_id=partition_id, x=x, y=y)

    with reading_gate():
        images, labels = cached_partition(key, compute)
        train, test = local_test_split(len(labels), settings.local_test_fraction,
                                       settings.seed, partition_id)
        loaded = tensors(train), (tensors(test) if test is not None else None)
    if partition_loaded is not None and device.type == "cpu":
        partition_loaded(settings, partition_id, num_partitions)
    return loaded


def local_test_split(n: int, fraction: float, seed: int, partition_id: int
                     ) -> tuple[np.ndarray, np.ndarray | None]:
    """(train indices, local test indices) of a partition of n examples: round(fraction x n)
    examples (at least 1) drawn by a generator seeded with (seed, partition-id), both in their
    original order; no test split when fraction = 0."""
    if fraction <= 0:
        return np.arange(n), None
    size = min(max(int(round(fraction * n)), 1), n - 1)
    rng = np.random.default_rng([seed, partition_id, 7])
    test = np.zeros(n, dtype=bool)
    test[rng.choice(n, size=size, replace=False)] = True
    return np.flatnonzero(~test), np.flatnonzero(test)


def client_data(settings: RunSettings, node_config: dict, device: torch.device) -> ClientData:
    """This node's training data (its partition less the local test split)."""
    partition_id, num_partitions = partition_identity(node_config, settings)
    return _client_data(settings, partition_id, num_partitions, device)[0]


def client_test_data(settings: RunSettings, node_config: dict, device: torch.device
                     ) -> ClientData:
    """This node's local test split; a clear error when `local-test-fraction` is 0."""
    partition_id, num_partitions = partition_identity(node_config, settings)
    test = _client_data(settings, partition_id, num_partitions, device)[1]
    if test is None:
        raise DataError("local evaluation needs a local test split: set local-test-fraction "
                        "> 0")
    return test
