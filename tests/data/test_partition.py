"""Specification of fedsqueeze.data.partition: seeded flwr-datasets partitions as index arrays."""

import numpy as np
import pytest
from flwr_datasets.partitioner import IidPartitioner

from fedsqueeze.data import DataError, partition_for, partition_indices, register_scheme
from fedsqueeze.data import partition as partition_module

NUM_CLASSES = 10
# Random class assignment may leave a class unused; flwr-datasets warns about it.
pytestmark = pytest.mark.filterwarnings("ignore:Classes.*will NOT be used:UserWarning")


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    return np.random.default_rng(1234).permutation(np.repeat(np.arange(NUM_CLASSES), 100))


@pytest.fixture(autouse=True)
def fresh_cache():
    """Each computation below starts from scratch, so "identical" is not just "cached"."""
    partition_module._fitted.cache_clear()
    yield
    partition_module._fitted.cache_clear()


SCHEMES = [
    ("iid", {}),
    ("pathological", {"class_assignment": "random"}),
    ("pathological", {"class_assignment": "deterministic"}),
    ("pathological", {"class_assignment": "first-deterministic"}),
    ("dirichlet", {"alpha": 0.5}),
]
SCHEME_IDS = ["iid", "pathological-random", "pathological-deterministic",
              "pathological-first-deterministic", "dirichlet"]


def classes_of(labels, part):
    return set(np.unique(labels[part]).tolist())


@pytest.mark.parametrize(("scheme", "options"), SCHEMES, ids=SCHEME_IDS)
def test_partition_is_identical_across_calls(labels, scheme, options):
    first = partition_indices(labels, scheme, 10, seed=7, **options)
    partition_module._fitted.cache_clear()
    second = partition_indices(labels.copy(), scheme, 10, seed=7, **options)
    assert len(first) == len(second) == 10
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(("scheme", "options"), SCHEMES, ids=SCHEME_IDS)
def test_partitions_are_sorted_disjoint_int64_arrays(labels, scheme, options):
    parts = partition_indices(labels, scheme, 10, seed=3, **options)
    for part in parts:
        assert part.dtype == np.int64
        assert np.all(np.diff(part) > 0)
        assert part.min() >= 0 and part.max() < len(labels)
    joined = np.concatenate(parts)
    assert len(np.unique(joined)) == len(joined)


@pytest.mark.parametrize(
    ("scheme", "options"),
    [SCHEMES[0], SCHEMES[1], SCHEMES[4]],
    ids=["iid", "pathological-random", "dirichlet"],
)
def test_a_different_seed_gives_a_different_partition(labels, scheme, options):
    a = partition_indices(labels, scheme, 10, seed=1, **options)
    b = partition_indices(labels, scheme, 10, seed=2, **options)
    assert any(not np.array_equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
def test_iid_and_dirichlet_cover_every_sample_exactly_once(labels, scheme):
    joined = np.concatenate(partition_indices(labels, scheme, 10, seed=5))
    np.testing.assert_array_equal(np.sort(joined), np.arange(len(labels)))


def test_iid_partitions_are_equal_sized_and_not_contiguous_blocks(labels):
    parts = partition_indices(labels, "iid", 10, seed=0)
    assert {len(p) for p in parts} == {100}
    assert not np.array_equal(parts[0], np.arange(100))


def test_dirichlet_partition_sizes_are_uneven_and_never_empty(labels):
    sizes = [len(p) for p in partition_indices(labels, "dirichlet", 10, seed=0, alpha=0.1)]
    assert min(sizes) >= 1
    assert max(sizes) > 2 * min(sizes)


@pytest.mark.parametrize("assignment", ["random", "deterministic", "first-deterministic"])
def test_pathological_two_classes_gives_each_client_exactly_two_classes(labels, assignment):
    parts = partition_indices(labels, "pathological", 10, seed=11, classes_per_partition=2,
                              class_assignment=assignment)
    assert [len(classes_of(labels, p)) for p in parts] == [2] * 10


def test_pathological_deterministic_assignment_gives_resfed_classes(labels):
    parts = partition_indices(labels, "pathological", 10, seed=0, classes_per_partition=3,
                              class_assignment="deterministic")
    for i, part in enumerate(parts):
        assert classes_of(labels, part) == {(i + j) % NUM_CLASSES for j in range(3)}
    joined = np.concatenate(parts)
    np.testing.assert_array_equal(np.sort(joined), np.arange(len(labels)))


def test_pathological_first_deterministic_gives_client_i_class_i(labels):
    parts = partition_indices(labels, "pathological", 20, seed=0, classes_per_partition=2,
                              class_assignment="first-deterministic")
    for i, part in enumerate(parts):
        assert i % NUM_CLASSES in classes_of(labels, part)


@pytest.mark.parametrize(("scheme", "options"), SCHEMES, ids=SCHEME_IDS)
def test_partition_for_is_that_clients_entry_of_partition_indices(labels, scheme, options):
    one = partition_for(labels, 4, scheme, 10, seed=9, **options)
    partition_module._fitted.cache_clear()
    np.testing.assert_array_equal(one, partition_indices(labels, scheme, 10, seed=9, **options)[4])


def test_returned_arrays_are_read_only_so_the_cache_cannot_be_corrupted(labels):
    part = partition_for(labels, 0, "iid", 10, seed=0)
    with pytest.raises(ValueError):
        part[0] = 123


def test_one_partition_holds_everything(labels):
    (only,) = partition_indices(labels, "dirichlet", 1, seed=0)
    np.testing.assert_array_equal(only, np.arange(len(labels)))


def test_partition_id_out_of_range_is_a_data_error(labels):
    with pytest.raises(DataError, match="partition-id 12 out of range for num-partitions 10"):
        partition_for(labels, 12, "iid", 10, seed=0)
    with pytest.raises(DataError, match="partition-id -1"):
        partition_for(labels, -1, "iid", 10, seed=0)


def test_unknown_scheme_names_the_valid_ones(labels):
    expected = ("unknown partition scheme 'stripes'.*dirichlet, iid, label-pairs, pathological, "
                "shards")
    with pytest.raises(DataError, match=expected):
        partition_indices(labels, "stripes", 10, seed=0)


@pytest.mark.parametrize("num_partitions", [0, 1001])
def test_num_partitions_out_of_range_is_a_data_error(labels, num_partitions):
    expected = rf"num-partitions must be in 1\.\.1000.*got {num_partitions}"
    with pytest.raises(DataError, match=expected):
        partition_indices(labels, "iid", num_partitions, seed=0)


@pytest.mark.parametrize("alpha", [0.0, -1.0])
def test_non_positive_alpha_is_a_data_error(labels, alpha):
    with pytest.raises(DataError, match="alpha must be > 0"):
        partition_indices(labels, "dirichlet", 10, seed=0, alpha=alpha)


@pytest.mark.parametrize("classes", [0, 11])
def test_classes_per_partition_out_of_range_is_a_data_error(labels, classes):
    expected = rf"classes-per-partition must be in 1\.\.10.*got {classes}"
    with pytest.raises(DataError, match=expected):
        partition_indices(labels, "pathological", 10, seed=0, classes_per_partition=classes)


def test_unknown_class_assignment_names_the_valid_ones(labels):
    expected = "class-assignment 'sorted'.*random, deterministic, first-deterministic"
    with pytest.raises(DataError, match=expected):
        partition_indices(labels, "pathological", 10, seed=0, class_assignment="sorted")


def test_an_impossible_dirichlet_draw_is_a_data_error_not_a_hang(labels):
    with pytest.warns(UserWarning), pytest.raises(DataError, match="cannot partition the data"):
        partition_indices(labels, "dirichlet", 50, seed=0, alpha=1e-3)


def test_data_error_is_a_value_error():
    assert issubclass(DataError, ValueError)


def test_a_registered_scheme_is_usable_by_name(labels, monkeypatch):
    monkeypatch.setattr(partition_module, "_SCHEMES", dict(partition_module._SCHEMES))

    @register_scheme("plain-iid")
    def _plain(labels, num_partitions, seed, options):
        return IidPartitioner(num_partitions)

    parts = partition_indices(labels, "plain-iid", 4, seed=0)
    assert [len(p) for p in parts] == [250] * 4
    register_scheme("plain-iid")(_plain)  # the same scheme again: nothing changes
    with pytest.raises(ValueError, match="already registered"):
        register_scheme("plain-iid")(lambda *args: IidPartitioner(2))


@pytest.mark.parametrize(
    ("scheme", "options", "expected"),
    [
        ("iid", {}, [[0, 3, 9, 12, 15, 16, 19, 20], [1, 2, 6, 11, 13, 14, 18, 22],
                     [4, 5, 7, 8, 10, 17, 21, 23]]),
        ("dirichlet", {"alpha": 1.0}, [[2, 11, 14, 16, 19, 20], [0, 3, 6, 9, 12, 13, 15, 22],
                                       [1, 4, 5, 7, 8, 10, 17, 18, 21, 23]]),
    ],
)
def test_partitions_match_the_pinned_ones_so_every_machine_agrees(scheme, options, expected):
    """Server and clients compute partitions independently. A failure here means numpy or
    flwr-datasets changed their random streams: machines on different versions would then
    disagree about who holds which samples."""
    labels = np.arange(24) % 3
    parts = partition_indices(labels, scheme, 3, seed=2026, **options)
    assert [p.tolist() for p in parts] == expected


def test_shards_give_each_client_two_label_sorted_shards_of_twenty():
    labels = np.repeat(np.arange(10), 2000)
    parts = partition_indices(labels, "shards", 400, seed=0)
    assert all(len(p) == 40 for p in parts)
    assert len(np.unique(np.concatenate(parts))) == 16_000       # no row twice
    assert max(len(np.unique(labels[p])) for p in parts) <= 2    # at most two classes each
    other = partition_indices(labels, "shards", 400, seed=1)
    assert any(not np.array_equal(a, b) for a, b in zip(parts, other))


def test_shards_that_need_more_rows_than_the_data_has_are_refused():
    with pytest.raises(DataError, match="need 20000 rows, the data has 10000"):
        partition_indices(np.repeat(np.arange(10), 1000), "shards", 500, seed=0)
