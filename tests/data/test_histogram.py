"""Specification of fedsqueeze.data.histogram."""

import numpy as np
import pytest

from fedsqueeze.data import (
    DataError,
    format_histogram,
    label_histogram,
    partition_indices,
    plot_histogram,
)


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    return np.random.default_rng(0).permutation(np.repeat(np.arange(10), 50))


def test_histogram_has_a_row_per_client_whose_sums_match_the_partitions(labels):
    parts = partition_indices(labels, "dirichlet", 7, seed=0, alpha=0.3)
    hist = label_histogram(labels, parts, 10)
    assert hist.shape == (7, 10) and hist.dtype == np.int64
    assert hist.sum(axis=1).tolist() == [len(p) for p in parts]
    assert hist.sum(axis=0).tolist() == [50] * 10


def test_histogram_of_a_pathological_partition_has_two_classes_per_row(labels):
    parts = partition_indices(labels, "pathological", 10, seed=0, class_assignment="deterministic")
    hist = label_histogram(labels, parts, 10)
    assert ((hist > 0).sum(axis=1) == 2).all()


def test_labels_beyond_num_classes_are_a_data_error(labels):
    with pytest.raises(DataError, match="labels must be in 0..4"):
        label_histogram(labels, [np.arange(10)], 5)


def test_format_histogram_is_a_table_with_one_row_per_client():
    text = format_histogram(np.array([[3, 0, 1], [0, 12, 0]]))
    lines = text.splitlines()
    assert len(lines) == 3
    assert lines[0].split() == ["client", "c0", "c1", "c2", "total"]
    assert lines[2].split() == ["1", "0", "12", "0", "12"]
    assert len({len(line) for line in lines}) == 1  # aligned columns


def test_plot_histogram_writes_a_png(tmp_path, labels):
    hist = label_histogram(labels, partition_indices(labels, "iid", 4, seed=0), 10)
    path = tmp_path / "hist.png"
    plot_histogram(hist, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
