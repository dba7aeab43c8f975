"""Specification of fedsqueeze.data.datasets: torchvision datasets as uint8 numpy arrays."""

import gzip
import hashlib
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets as tvd

from fedsqueeze.data import (
    DataError,
    DatasetInfo,
    dataset_info,
    default_data_dir,
    load_split,
    to_tensor,
)
from fedsqueeze.data import datasets as datasets_module

SYSTEM_DIR = datasets_module.SYSTEM_FASHION_MNIST_DIR
REPO = Path(__file__).resolve().parents[2]


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX (MNIST) format: magic 0,0,0x08 (ubyte),ndim, big-endian dims, raw bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def tiny_images(n: int, seed: int, shape=(28, 28)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


@pytest.fixture
def no_system_fashion_mnist(tmp_path, monkeypatch) -> Path:
    empty = tmp_path / "no-system-dir"
    empty.mkdir()
    monkeypatch.setattr(datasets_module, "SYSTEM_FASHION_MNIST_DIR", empty)
    return empty


def test_dataset_info_of_every_registered_dataset():
    assert dataset_info("fashion-mnist") == DatasetInfo("fashion-mnist", 10, (1, 28, 28))
    assert dataset_info("mnist").num_classes == 10
    assert dataset_info("emnist-balanced").num_classes == 47
    assert dataset_info("cifar10").image_shape == (3, 32, 32)
    assert dataset_info("cifar100").num_classes == 100


def test_unknown_dataset_names_the_valid_ones():
    valid = "cifar10, cifar100, emnist-balanced, fashion-mnist, mnist"
    with pytest.raises(DataError, match=f"unknown dataset 'svhn'.*{valid}"):
        dataset_info("svhn")
    with pytest.raises(DataError, match="unknown dataset"):
        load_split("svhn", "train")


def test_unknown_split_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="unknown split 'validation'"):
        load_split("mnist", "validation", tmp_path)


def test_default_data_dir_is_the_env_variable_or_a_cache_outside_the_repository(
    monkeypatch, tmp_path
):
    monkeypatch.setenv("FEDSQUEEZE_DATA_DIR", str(tmp_path / "d"))
    assert default_data_dir() == tmp_path / "d"
    monkeypatch.delenv("FEDSQUEEZE_DATA_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_data_dir() == tmp_path / "home" / ".cache" / "fedsqueeze" / "data"
    assert REPO not in default_data_dir().parents


@pytest.mark.skipif(
    not SYSTEM_DIR.is_dir(), reason=f"{SYSTEM_DIR} absent (apt-get install dataset-fashion-mnist)"
)
def test_fashion_mnist_loads_from_the_debian_package_files(tmp_path):
    train_x, train_y = load_split("fashion-mnist", "train", tmp_path)
    test_x, test_y = load_split("fashion-mnist", "test", tmp_path)
    assert train_x.shape == (60000, 28, 28) and test_x.shape == (10000, 28, 28)
    assert train_x.dtype == np.uint8 and train_y.dtype == np.int64
    assert np.bincount(train_y).tolist() == [6000] * 10
    assert np.bincount(test_y).tolist() == [1000] * 10
    assert train_x.max() == 255
    staged = sorted(p.name for p in (tmp_path / "FashionMNIST" / "raw").iterdir())
    assert staged == sorted(datasets_module.FASHION_MNIST_FILES)  # no temporary files left


def write_fashion_gz(directory: Path, n_train: int = 12, n_test: int = 5) -> dict:
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": tiny_images(n_train, 0),
        "train-labels-idx1-ubyte": np.arange(n_train, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte": tiny_images(n_test, 1),
        "t10k-labels-idx1-ubyte": np.arange(n_test, dtype=np.uint8) % 10,
    }
    for name, array in arrays.items():
        (directory / f"{name}.gz").write_bytes(gzip.compress(idx_bytes(array)))
    return arrays


def test_fashion_mnist_gz_files_placed_directly_in_the_data_dir_are_unpacked(
    tmp_path, no_system_fashion_mnist
):
    arrays = write_fashion_gz(tmp_path)
    images, labels = load_split("fashion-mnist", "train", tmp_path)
    np.testing.assert_array_equal(images, arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(labels, arrays["train-labels-idx1-ubyte"])
    assert (tmp_path / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte").is_file()


def test_fashion_mnist_is_unpacked_from_the_system_directory(tmp_path, monkeypatch):
    system = tmp_path / "system"
    arrays = write_fashion_gz(system)
    monkeypatch.setattr(datasets_module, "SYSTEM_FASHION_MNIST_DIR", system)
    images, _ = load_split("fashion-mnist", "test", tmp_path / "data")
    np.testing.assert_array_equal(images, arrays["t10k-images-idx3-ubyte"])


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path, no_system_fashion_mnist):
    with pytest.raises(DataError) as caught:
        load_split("fashion-mnist", "train", tmp_path / "data")
    message = str(caught.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert str(tmp_path / "data") in message and str(no_system_fashion_mnist) in message
    assert "data-dir='DIR'" in message and "data-download=true" in message


def test_load_split_is_cached_and_read_only(tmp_path, no_system_fashion_mnist):
    write_fashion_gz(tmp_path)
    first = load_split("fashion-mnist", "train", tmp_path)
    assert load_split("fashion-mnist", "train", str(tmp_path)) is first
    with pytest.raises(ValueError):
        first[0][0, 0, 0] = 1


def test_mnist_loads_from_idx_files(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    train, test = tiny_images(7, 2), tiny_images(3, 3)
    for prefix, images in (("train", train), ("t10k", test)):
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(idx_bytes(images))
        labels = np.arange(len(images), dtype=np.uint8)
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(idx_bytes(labels))
    images, labels = load_split("mnist", "test", tmp_path)
    np.testing.assert_array_equal(images, test)
    assert labels.tolist() == [0, 1, 2] and labels.dtype == np.int64


def test_emnist_balanced_images_come_back_upright(tmp_path):
    raw = tmp_path / "EMNIST" / "raw"
    raw.mkdir(parents=True)
    upright = tiny_images(4, 4)
    # EMNIST stores every image transposed.
    stored = upright.transpose(0, 2, 1)
    (raw / "emnist-balanced-train-images-idx3-ubyte").write_bytes(idx_bytes(stored))
    labels = np.array([0, 46, 3, 9], np.uint8)
    (raw / "emnist-balanced-train-labels-idx1-ubyte").write_bytes(idx_bytes(labels))
    images, labels = load_split("emnist-balanced", "train", tmp_path)
    np.testing.assert_array_equal(images, upright)
    assert labels.tolist() == [0, 46, 3, 9]


def write_cifar(
    root: Path, folder: str, files: list[str], label_key: str, n: int
) -> dict[str, np.ndarray]:
    """Tiny CIFAR batches in the real format: pickled dicts, rows of 3072 bytes (CHW)."""
    (root / folder).mkdir(parents=True)
    images = {}
    for k, name in enumerate(files):
        chw = np.random.default_rng(k).integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        entry = {"data": chw.reshape(n, 3072), label_key: [(k + i) % 10 for i in range(n)]}
        (root / folder / name).write_bytes(pickle.dumps(entry))
        images[name] = chw.transpose(0, 2, 3, 1)
    return images


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_cifar10_loads_from_batch_files(tmp_path, monkeypatch):
    batches = [f"data_batch_{i}" for i in range(1, 6)]
    images = write_cifar(tmp_path, "cifar-10-batches-py", [*batches, "test_batch"], "labels", 2)
    folder = tmp_path / "cifar-10-batches-py"
    meta = {"label_names": [f"c{i}" for i in range(10)]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta))
    # torchvision checks every file against the md5 of the real one; tiny files need their own.
    monkeypatch.setattr(tvd.CIFAR10, "train_list", [[b, md5(folder / b)] for b in batches])
    monkeypatch.setattr(tvd.CIFAR10, "test_list", [["test_batch", md5(folder / "test_batch")]])
    meta_md5 = md5(folder / "batches.meta")
    monkeypatch.setattr(tvd.CIFAR10, "meta", {**tvd.CIFAR10.meta, "md5": meta_md5})
    train_x, train_y = load_split("cifar10", "train", tmp_path)
    test_x, test_y = load_split("cifar10", "test", tmp_path)
    assert train_x.shape == (10, 32, 32, 3) and train_x.dtype == np.uint8
    np.testing.assert_array_equal(train_x[:2], images["data_batch_1"])
    np.testing.assert_array_equal(test_x, images["test_batch"])
    assert train_y.dtype == np.int64 and test_y.tolist() == [5, 6]


def test_cifar10_files_failing_torchvisions_md5_check_are_a_data_error(tmp_path):
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    write_cifar(tmp_path, "cifar-10-batches-py", files, "labels", 1)
    expected = "cifar10 train split not found.*cifar-10-batches-py.*data-download=true"
    with pytest.raises(DataError, match=expected):
        load_split("cifar10", "train", tmp_path)


def test_to_tensor_makes_float_nchw_divided_by_scale():
    grey = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    out = to_tensor(grey, scale=256.0)
    assert out.dtype == torch.float32 and out.shape == (2, 1, 3, 4)
    np.testing.assert_allclose(out[:, 0].numpy(), grey / 256.0)
    colour = np.random.default_rng(0).integers(0, 256, (2, 5, 6, 3), dtype=np.uint8)
    out = to_tensor(colour)
    assert out.shape == (2, 3, 5, 6)
    np.testing.assert_allclose(out.numpy(), colour.transpose(0, 3, 1, 2) / 255.0, rtol=1e-6)


def test_to_tensor_accepts_the_read_only_cached_arrays(tmp_path, no_system_fashion_mnist):
    write_fashion_gz(tmp_path)
    images, _ = load_split("fashion-mnist", "train", tmp_path)
    assert to_tensor(images).shape == (12, 1, 28, 28)


def test_to_tensor_rejects_other_shapes_and_takes_feature_vectors():
    with pytest.raises(DataError, match=r"\(N,F\), \(N,H,W\) or \(N,H,W,C\)"):
        to_tensor(np.zeros((2, 3, 4, 5, 6), np.uint8))
    features = np.arange(6, dtype=np.float64).reshape(2, 3)
    features.flags.writeable = False  # as load_split returns them
    out = to_tensor(features, scale=2.0)
    assert out.dtype == torch.float32 and out.shape == (2, 3)
    assert out.tolist() == [[0.0, 0.5, 1.0], [1.5, 2.0, 2.5]]
