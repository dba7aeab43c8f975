"""The on-disk partition cache: hits, misses, keys, corrupt entries, disabling."""

from __future__ import annotations

import numpy as np
import pytest

from fedsqueeze.data import partition_cache as pc


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDSQUEEZE_CACHE_DIR", str(tmp_path))
    return tmp_path


def _arrays(seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (5, 28, 28), dtype=np.uint8), rng.integers(0, 10, 5)


def test_second_call_reads_the_stored_entry(cache):
    calls = []
    key = pc.partition_key(dataset="d", partition_id=0)
    first = pc.cached_partition(key, lambda: (calls.append(1), _arrays())[1])
    second = pc.cached_partition(key, lambda: (calls.append(1), _arrays(1))[1])
    assert calls == [1]
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    assert second[0].dtype == np.uint8 and second[0].shape == (5, 28, 28)
    assert [p.name for p in (cache / "partitions").iterdir()] == [f"{key}.npz"]


def test_keys_separate_every_field():
    base = dict(dataset="fashion-mnist", partition_id=0, num_partitions=10, seed=1)
    keys = {pc.partition_key(**base)}
    for field, other in [("dataset", "mnist"), ("partition_id", 1), ("num_partitions", 9),
                         ("seed", 2)]:
        keys.add(pc.partition_key(**{**base, field: other}))
    assert len(keys) == 5
    assert pc.partition_key(**base) == pc.partition_key(**dict(reversed(base.items())))


def test_corrupt_entry_is_recomputed_and_replaced(cache):
    key = pc.partition_key(dataset="d")
    path = cache / "partitions" / f"{key}.npz"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not an npz")
    images, _ = pc.cached_partition(key, _arrays)
    np.testing.assert_array_equal(images, _arrays()[0])
    np.testing.assert_array_equal(pc.cached_partition(key, lambda: _arrays(5))[0], images)


def test_off_disables_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("FEDSQUEEZE_CACHE_DIR", "off")
    assert pc.cache_dir() is None
    calls = []
    for _ in range(2):
        pc.cached_partition("k", lambda: (calls.append(1), _arrays())[1])
    assert calls == [1, 1]


def test_unwritable_folder_still_returns_the_partition(monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("FEDSQUEEZE_CACHE_DIR", str(blocker))  # a file, not a folder
    images, labels = pc.cached_partition("k", _arrays)
    np.testing.assert_array_equal(labels, _arrays()[1])


def test_client_process_imports_neither_torchvision_nor_hf_datasets():
    import subprocess
    import sys

    code = ("import sys, fedsqueeze.client.app; "
            "print(sorted(m for m in ('torchvision', 'datasets', 'flwr_datasets') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
