"""Image datasets through torchvision, as uint8 numpy arrays, with an offline FashionMNIST.

Datasets are registered by name (`register_dataset`); each registration is a function that
builds the torchvision dataset from a root directory. FashionMNIST is also found in the
Debian package `dataset-fashion-mnist`, whose gzipped IDX files are unpacked into the layout
torchvision reads.
"""

from __future__ import annotations

import gzip
import hashlib
import inspect
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from urllib.error import URLError

import numpy as np
import torch

from fedsqueeze.data.errors import DataError

DEFAULT_DATASET = "fashion-mnist"
SPLITS = ("train", "test")

# Where `apt-get install dataset-fashion-mnist` puts the four IDX .gz files (tests override it).
SYSTEM_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

Arrays = tuple[np.ndarray, np.ndarray]
Loader = Callable[[Path, bool, bool], Arrays]


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    image_shape: tuple[int, int, int]  # (C, H, W)


@dataclass(frozen=True)
class _Source:
    info: DatasetInfo
    load: Loader  # (root, train, download) -> (images, labels)
    layout: str  # the files torchvision expects under the root
    searched: Callable[[Path], list[Path]]  # root -> the directories looked in
    get_it: str  # how to get the files, for the missing-data message


_REGISTRY: dict[str, _Source] = {}


def register_dataset(
    info: DatasetInfo,
    *,
    layout: str,
    searched: Callable[[Path], list[Path]] = lambda root: [root],
    get_it: str = "Put the files there",
) -> Callable[[Loader], Loader]:
    """Register `load(root, train, download) -> (images, labels)` under `info.name`.

    `layout`, `searched` and `get_it` make the message shown when the files are missing.
    """

    def decorate(load: Loader) -> Loader:
        if info.name in _REGISTRY:
            raise ValueError(f"dataset {info.name!r} is already registered")
        _REGISTRY[info.name] = _Source(info, load, layout, searched, get_it)
        return load

    return decorate


def dataset_names() -> list[str]:
    return sorted(_REGISTRY)


def _source(name: str) -> _Source:
    source = _REGISTRY.get(name)
    if source is None:
        raise DataError(f"unknown dataset {name!r}; valid names: {', '.join(dataset_names())}")
    return source


def dataset_identity(name: str) -> str:
    """What a dataset's data comes from: its loader's module and name and a digest of that
    module's source (or its `__version__` when the source cannot be read), so that the
    partition cache never serves what an earlier version of a loader produced."""
    load = _source(name).load
    try:
        version = hashlib.sha256(Path(inspect.getfile(load)).read_bytes()).hexdigest()[:16]
    except (TypeError, OSError):
        version = str(getattr(sys.modules.get(load.__module__), "__version__", "unknown"))
    return f"{load.__module__}.{load.__qualname__}:{version}"


def dataset_info(name: str) -> DatasetInfo:
    return _source(name).info


def default_data_dir() -> Path:
    """`$FEDSQUEEZE_DATA_DIR` if set, else `~/.cache/fedsqueeze/data` (never the repository)."""
    env = os.environ.get("FEDSQUEEZE_DATA_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "fedsqueeze" / "data"


def load_split(
    name: str, split: str, data_dir: str | Path | None = None, download: bool = False
) -> Arrays:
    """Images (N,H,W) or (N,H,W,C) uint8 and labels (N,) int64, both read-only.

    Cached per process: a ClientApp process asks for its data on every message.
    """
    _source(name)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r} for {name}; valid splits: {', '.join(SPLITS)}")
    root = Path(data_dir).expanduser() if data_dir else default_data_dir()
    return _load_cached(name, split, root.resolve(), download)


@lru_cache(maxsize=8)
def _load_cached(name: str, split: str, root: Path, download: bool) -> Arrays:
    source = _REGISTRY[name]
    try:
        images, labels = source.load(root, split == "train", download)
    except (RuntimeError, URLError) as err:
        # torchvision raises RuntimeError for missing or corrupted files and failed downloads.
        raise DataError(_missing_message(source, split, root, download, err)) from err
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def _missing_message(
    source: _Source, split: str, root: Path, download: bool, err: Exception
) -> str:
    attempt = "download failed" if download else "not found"
    searched = ", ".join(str(path) for path in source.searched(root))
    return (
        f"{source.info.name} {split} split {attempt} (searched {searched}; "
        f"torchvision expects {root}/{source.layout} and says: {str(err).strip()}). "
        f"{source.get_it}, or set run-config data-dir='DIR', or data-download=true on a "
        "machine with a network."
    )


def _tvd():
    """torchvision.datasets, imported on first use (seconds; cached partitions skip it)."""
    import torchvision.datasets

    return torchvision.datasets


def _arrays(dataset) -> Arrays:
    data = dataset.data  # torch uint8 for the MNIST family, numpy (N,H,W,C) for CIFAR
    images = data.numpy() if isinstance(data, torch.Tensor) else np.asarray(data)
    labels = np.asarray(dataset.targets, dtype=np.int64)
    return images, labels


def _stage_fashion_mnist(root: Path) -> None:
    """Unpack missing FashionMNIST IDX files into `root/FashionMNIST/raw/`.

    The .gz files are looked for in that folder, in `root` itself, and in the Debian package's
    folder. Each file is written to a temporary name and renamed, so client processes racing
    to stage the same root never read half a file.
    """
    raw = root / "FashionMNIST" / "raw"
    for name in FASHION_MNIST_FILES:
        if (raw / name).is_file():
            continue
        folders = (raw, root, SYSTEM_FASHION_MNIST_DIR)
        found = next((d / f"{name}.gz" for d in folders if (d / f"{name}.gz").is_file()), None)
        if found is None:
            continue  # torchvision reports it missing (or downloads it)
        raw.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=raw, prefix=f".{name}.")
        try:
            with os.fdopen(fd, "wb") as out, gzip.open(found, "rb") as src:
                shutil.copyfileobj(src, out)
            os.chmod(tmp, 0o644)  # mkstemp creates 0600; the data dir may be shared
            os.replace(tmp, raw / name)
        except BaseException:
            os.unlink(tmp)
            raise


@register_dataset(
    DatasetInfo("fashion-mnist", 10, (1, 28, 28)),
    layout="FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte",
    searched=lambda root: [root / "FashionMNIST" / "raw", root, SYSTEM_FASHION_MNIST_DIR],
    get_it=(
        "Install it with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu), "
        "or put the four *-ubyte.gz files in the data dir"
    ),
)
def _fashion_mnist(root: Path, train: bool, download: bool) -> Arrays:
    try:
        _stage_fashion_mnist(root)
    except (OSError, EOFError) as err:  # unwritable root, corrupt or truncated .gz
        raise DataError(f"fashion-mnist: cannot unpack the IDX files into {root}: {err}") from err
    return _arrays(_tvd().FashionMNIST(root, train=train, download=download))


@register_dataset(
    DatasetInfo("emnist-balanced", 47, (1, 28, 28)),
    layout="EMNIST/raw/emnist-balanced-{train,test}-{images-idx3,labels-idx1}-ubyte",
)
def _emnist_balanced(root: Path, train: bool, download: bool) -> Arrays:
    images, labels = _arrays(_tvd().EMNIST(root, split="balanced", train=train, download=download))
    # EMNIST's IDX files store each image transposed; torchvision leaves them so.
    return np.ascontiguousarray(images.transpose(0, 2, 1)), labels


def _torchvision(dataset: str) -> Loader:
    """The loader of the torchvision dataset class `dataset` (its own files, as it is)."""
    def load(root: Path, train: bool, download: bool) -> Arrays:
        return _arrays(getattr(_tvd(), dataset)(root, train=train, download=download))
    return load


for _info, _layout, _class in (
        (DatasetInfo("mnist", 10, (1, 28, 28)),
         "MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte", "MNIST"),
        (DatasetInfo("cifar10", 10, (3, 32, 32)),
         "cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}", "CIFAR10"),
        (DatasetInfo("cifar100", 100, (3, 32, 32)), "cifar-100-python/{train,test,meta}",
         "CIFAR100")):
    register_dataset(_info, layout=_layout)(_torchvision(_class))
del _info, _layout, _class


def to_tensor(images: np.ndarray, scale: float = 255.0) -> torch.Tensor:
    """float32 tensor of `images / scale` (FedSparsify divides by 256), any numeric dtype:
    (N,C,H,W) for images (N,H,W) or (N,H,W,C), (N,F) for feature vectors (N,F)."""
    if scale <= 0:
        raise DataError(f"scale must be > 0, got {scale}")
    if images.ndim == 2:
        nchw = images
    elif images.ndim == 3:
        nchw = images[:, None]
    elif images.ndim == 4:
        nchw = images.transpose(0, 3, 1, 2)
    else:
        raise DataError(f"inputs must be (N,F), (N,H,W) or (N,H,W,C), got shape {images.shape}")
    out = np.array(nchw, dtype=np.float32, order="C")  # a copy: the input may be read-only
    out /= np.float32(scale)
    return torch.from_numpy(out)
