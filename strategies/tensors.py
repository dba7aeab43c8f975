"""The canonical list of tensors that travel for a model, and conversions.

Canonical order is the model's `state_dict` order. Parameters and BatchNorm running
statistics travel; integer bookkeeping buffers (`num_batches_tracked`) do not, and neither do
`torch.nn.utils.prune`'s `*_orig` / `*_mask` (a method that prunes must not leave them in).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

Arrays = OrderedDict[str, np.ndarray]  # travelling tensors by state-dict key, canonical order


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


def load_arrays(model: torch.nn.Module, arrays: Arrays | Sequence[np.ndarray]) -> None:
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


def to_arrayrecord(arrays: Arrays) -> ArrayRecord:
    return ArrayRecord({key: Array(np.ascontiguousarray(value)) for key, value in arrays.items()})


def from_arrayrecord(record: ArrayRecord) -> Arrays:
    return OrderedDict((key, record[key].numpy()) for key in record.keys())


def trainable_keys(model: torch.nn.Module) -> list[str]:
    """State-dict keys of the trainable parameters (what pruning and model size count)."""
    return [name for name, param in model.named_parameters() if param.requires_grad]


def count_nonzeros(arrays: dict[str, np.ndarray], keys: list[str]) -> tuple[int, int]:
    """(non-zero entries, all entries) of `arrays[key]` over `keys`."""
    return (sum(int(np.count_nonzero(arrays[k])) for k in keys),
            sum(int(arrays[k].size) for k in keys))


def keyed(keys: Sequence[str], arrays: Sequence[np.ndarray]) -> Arrays:
    """Arrays in canonical order under their state-dict keys."""
    return OrderedDict(zip(keys, arrays))


def numel(shapes: Sequence[tuple[int, ...]]) -> int:
    """Entries of all tensors of these shapes together."""
    return int(sum(int(np.prod(shape, dtype=np.int64)) for shape in shapes))


def flatten(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """One float32 vector of the tensors, concatenated in order."""
    if not arrays:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate([np.asarray(a, dtype=np.float32).reshape(-1) for a in arrays])


def unflatten(vector: np.ndarray, shapes: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
    """The inverse of `flatten`: copies of the vector's slices in these shapes."""
    if vector.size != numel(shapes):
        raise ValueError(f"vector of {vector.size} entries does not fill shapes {list(shapes)}")
    out, start = [], 0
    for shape in shapes:
        size = int(np.prod(shape, dtype=np.int64))
        out.append(vector[start:start + size].reshape(shape).copy())
        start += size
    return out


def top_k_count(n: int, sparsity: float) -> int:
    """k = max(floor(n (1 - sparsity)), 1), at most n: the entries a top-k keeps."""
    return min(max(int(np.floor(n * (1.0 - sparsity))), 1), n)


def top_k_indices(vector: np.ndarray, k: int) -> np.ndarray:
    """Sorted flat indices (int64) of the k largest |v| over the whole vector (global top-k;
    ties broken by numpy's introselect, deterministic for a given input)."""
    n = vector.size
    if k >= n:
        return np.arange(n, dtype=np.int64)
    idx = np.argpartition(np.abs(vector), n - k)[n - k:]
    return np.sort(idx).astype(np.int64)
