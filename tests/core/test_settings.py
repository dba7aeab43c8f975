import pytest

from fedsqueeze.strategies.registry import get_method, method_names
from fedsqueeze.strategies.settings import ConfigError, RunSettings


def test_defaults_are_the_issue_defaults():
    s = RunSettings()
    assert (s.method, s.dataset, s.partitioner, s.partition_classes, s.model) == (
        "fedavg", "fashion-mnist", "pathological", 2, "fc2")
    assert (s.local_epochs, s.batch_size, s.lr) == (1, 32, 0.02)


@pytest.mark.parametrize("key, value, fragment", [
    ("lr", -1.0, "'lr' = -1.0 is invalid: must be > 0"),
    ("fraction-train", 1.5, "'fraction-train' = 1.5 is invalid: must be in (0, 1]"),
    ("num-server-rounds", 0, "'num-server-rounds' = 0 is invalid"),
    ("on-too-few-replies", "retry", "must be one of fail, skip"),
    ("local-epochs", "two", "'local-epochs' = 'two' must be an integer"),
    ("fail-partitions", "1,x", "comma-separated integers"),
])
def test_out_of_range_value_names_the_key_and_allowed_range(key, value, fragment):
    with pytest.raises(ConfigError) as err:
        RunSettings.from_run_config({key: value})
    assert fragment in str(err.value)


def test_integral_float_is_accepted_for_an_integer_key():
    assert RunSettings.from_run_config({"num-server-rounds": 5.0}).num_server_rounds == 5


def test_unknown_method_lists_the_registered_ones():
    with pytest.raises(ConfigError, match="unknown method, valid: fedadam, fedavg"):
        get_method("fedsparse")
    assert "fedavg" in method_names()


def test_method_key_is_validated_with_its_prefix():
    settings = RunSettings()
    with pytest.raises(ConfigError, match="'fedavgm.server-lr' = -1"):
        get_method("fedavgm")(settings, {"fedavgm.server-lr": -1})
