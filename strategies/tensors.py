"""The canonical list of tensors that travel for a model, and conversions.

Canonical order is the model's `state_dict` order. Parameters and BatchNorm running
statistics travel; integer bookkeeping buffers (`num_batches_tracked`) do not, and neither do
`torch.nn.utils.prune`'s `*_orig` / `*_mask` (a method that prunes must not leave them in).
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from flwr.app import Array, ArrayRecord


def travelling_keys(model: torch.nn.Module) -> list[str]:
    """State-dict keys that are exchanged, in canonical order."""
    keys = []
    for key, value in model.state_dict().items():
        if key.endswith(("_orig", "_mask")):
            raise ValueError(
                f"state_dict entry {key!r} looks like torch.nn.utils.prune's bookkeeping; "
                "remove the pruning re-parametrisation before exchanging the model"
            )
        if value.is_floating_point():
            keys.append(key)
    return keys


def model_arrays(model: torch.nn.Module) -> OrderedDict[str, np.ndarray]:
    """The travelling tensors as float32 numpy arrays (copies, on the CPU)."""
    state = model.state_dict()
    return OrderedDict(
        (key, state[key].detach().to("cpu", torch.float32).numpy().copy())
        for key in travelling_keys(model)
    )


def expected_shapes(model: torch.nn.Module) -> list[tuple[int, ...]]:
    state = model.state_dict()
    return [tuple(state[key].shape) for key in travelling_keys(model)]


def load_arrays(model: torch.nn.Module, arrays: OrderedDict[str, np.ndarray] | list[np.ndarray]
                ) -> None:
    """Copy arrays (canonical order, or keyed) into the model's travelling tensors in place."""
    keys = travelling_keys(model)
    values = list(arrays.values()) if isinstance(arrays, dict) else list(arrays)
    if len(values) != len(keys):
        raise ValueError(f"model has {len(keys)} travelling tensors, got {len(values)}")
    state = model.state_dict()
    with torch.no_grad():
        for key, value in zip(keys, values):
            target = state[key]
            if tuple(target.shape) != tuple(value.shape):
                raise ValueError(f"{key}: shape {value.shape} does not match {tuple(target.shape)}")
            target.copy_(torch.from_numpy(np.ascontiguousarray(value)).to(target.dtype))


def to_arrayrecord(arrays: OrderedDict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({key: Array(np.ascontiguousarray(value)) for key, value in arrays.items()})


def from_arrayrecord(record: ArrayRecord) -> OrderedDict[str, np.ndarray]:
    return OrderedDict((key, record[key].numpy()) for key in record.keys())


def trainable_keys(model: torch.nn.Module) -> list[str]:
    """State-dict keys of the trainable parameters (what pruning and model size count)."""
    return [name for name, param in model.named_parameters() if param.requires_grad]


def count_nonzeros(arrays: dict[str, np.ndarray], keys: list[str]) -> tuple[int, int]:
    """(non-zero entries, all entries) of `arrays[key]` over `keys`."""
    return (sum(int(np.count_nonzero(arrays[k])) for k in keys),
            sum(int(arrays[k].size) for k in keys))
