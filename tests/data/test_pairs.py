"""The deterministic non-IID(2) split of FedSparsify's reference setting ("label-pairs")."""

import numpy as np
import pytest
from flwr_datasets.partitioner import Partitioner

from fedsqueeze.data import DataError, partition_indices, scheme_names
from fedsqueeze.data.pairs import LabelPairsPartitioner, label_pairs_assignment


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    """FashionMNIST's shape: 10 classes x 6000 rows, in a shuffled order."""
    return np.random.default_rng(7).permutation(np.repeat(np.arange(10), 6000))


def test_registered_and_a_flower_partitioner():
    assert "label-pairs" in scheme_names()
    assert issubclass(LabelPairsPartitioner, Partitioner)


def test_clients_2j_and_2j_plus_1_share_classes_2j_and_2j_plus_1(labels):
    parts = partition_indices(labels, "label-pairs", 10, seed=1990)
    for pid, part in enumerate(parts):
        j = pid // 2
        values, counts = np.unique(labels[part], return_counts=True)
        assert values.tolist() == [2 * j, 2 * j + 1] and counts.tolist() == [3000, 3000]
    assert len(np.unique(np.concatenate(parts))) == 60_000   # disjoint, everything assigned


def test_chunks_follow_the_stable_sort_by_label(labels):
    parts = label_pairs_assignment(labels, 10)
    class0 = np.flatnonzero(labels == 0)   # original order = stable sort order
    assert np.array_equal(np.sort(parts[0][labels[parts[0]] == 0]), class0[:3000])
    assert np.array_equal(np.sort(parts[1][labels[parts[1]] == 0]), class0[3000:])


def test_deterministic_whatever_the_seed(labels):
    a = partition_indices(labels, "label-pairs", 10, seed=1)
    b = partition_indices(labels, "label-pairs", 10, seed=2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_too_few_samples_is_a_data_error():
    with pytest.raises(DataError):
        label_pairs_assignment(np.array([0, 1, 2]), 10)
