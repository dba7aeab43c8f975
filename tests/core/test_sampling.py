import pytest

from fedsqueeze.strategies.sampling import ClientDirectory

DIRECTORY = ClientDirectory({9001: 3, 17: 0, 555: 2, 42: 1, 7: 4})


def test_same_seed_and_round_pick_the_same_clients_in_partition_order():
    first = DIRECTORY.sample(3, 0.6, 2, seed=0)
    assert first == DIRECTORY.sample(3, 0.6, 2, seed=0)
    partitions = [DIRECTORY.partition_of(n) for n in first]
    assert partitions == sorted(partitions) and len(partitions) == 3


def test_rounds_draw_different_samples():
    draws = {tuple(DIRECTORY.sample(r, 0.4, 1, seed=0)) for r in range(1, 20)}
    assert len(draws) > 1


def test_min_nodes_raises_the_sample_size_like_flower():
    assert len(DIRECTORY.sample(1, 0.1, 3, seed=0)) == 3


def test_full_participation_takes_everyone():
    assert [DIRECTORY.partition_of(n) for n in DIRECTORY.sample(1, 1.0, 2, 0)] == [0, 1, 2, 3, 4]


def test_two_nodes_with_one_partition_id_are_rejected():
    with pytest.raises(ValueError, match=r"several nodes report partition-id \[1\]"):
        ClientDirectory({1: 1, 2: 1})
