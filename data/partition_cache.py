"""On-disk cache of one client's partition (images and labels as .npy), so that a ClientApp
process, which Flower's SuperNode starts afresh for every message, reads 5 MB instead of
importing torchvision and Hugging Face `datasets` and re-partitioning the whole dataset.

Entries are keyed by everything that decides the partition (dataset, data folder, scheme and
its options, seed, partition id and count) plus a digest of the partitioning code, so an edit
to a partitioner never serves stale partitions. Writes go to a temporary file renamed into
place: processes racing on one key never read half an entry. A corrupt entry is recomputed.
Folder: $FEDSQUEEZE_CACHE_DIR, else $XDG_CACHE_HOME/fedsqueeze, else ~/.cache/fedsqueeze;
FEDSQUEEZE_CACHE_DIR=off disables the cache.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

Arrays = tuple[np.ndarray, np.ndarray]
_CODE_FILES = ("partition.py", "pairs.py", "datasets.py")


def cache_dir() -> Path | None:
    """The cache folder, or None when disabled."""
    explicit = os.environ.get("FEDSQUEEZE_CACHE_DIR")
    if explicit == "off":
        return None
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fedsqueeze"


@functools.lru_cache(maxsize=1)
def _code_digest() -> str:
    here = Path(__file__).parent
    h = hashlib.sha256()
    for name in _CODE_FILES:
        h.update((here / name).read_bytes())
    return h.hexdigest()[:16]


def partition_key(**fields: object) -> str:
    """A file-name-safe key for the fields that decide a partition."""
    text = json.dumps({**fields, "code": _code_digest()}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def cached_partition(key: str, compute: Callable[[], Arrays]) -> Arrays:
    """(images, labels) for `key`: read from the cache, or computed and stored."""
    folder = cache_dir()
    if folder is None:
        return compute()
    path = folder / "partitions" / f"{key}.npz"
    try:
        with np.load(path, allow_pickle=False) as entry:
            return entry["images"], entry["labels"]
    except (OSError, KeyError, ValueError):
        pass  # missing or corrupt: recompute below
    images, labels = compute()
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{key}.", suffix=".npz")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, images=images, labels=labels)
        os.replace(tmp, path)
        tmp = None
    except OSError:
        pass  # a read-only or full disk only costs the next process the recomputation
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    return images, labels
