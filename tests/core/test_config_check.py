from pathlib import Path

import pytest

from fedsqueeze.deploy.config_check import (
    checked_run_config,
    declared_config,
    find_app_dir,
    parse_overrides,
)
from fedsqueeze.strategies.channel import channel_names, get_channel
from fedsqueeze.strategies.registry import get_method, method_names
from fedsqueeze.strategies.settings import ConfigError, RunSettings, to_run_config

APP = find_app_dir()


def test_every_settings_field_is_declared_in_pyproject_with_its_default():
    declared = declared_config(APP)
    for key, default in to_run_config(RunSettings()).items():
        assert key in declared, f"{key} missing from [tool.flwr.app.config]"
        assert declared[key] == default, f"{key}: pyproject says {declared[key]!r}, " \
                                         f"RunSettings {default!r}"


@pytest.mark.parametrize("name", method_names())
def test_every_method_key_is_declared_in_pyproject_with_its_dataclass_default(name):
    declared = declared_config(APP)
    method = get_method(name)
    defaults = to_run_config(method.Config(), prefix=name)
    for key, default in defaults.items():
        assert key in declared, f"{key} missing from [tool.flwr.app.config]"
        assert declared[key] == default, f"{key}: pyproject says {declared[key]!r}, " \
                                         f"{method.Config.__name__} {default!r}"
    # and no stale key of this method is left in pyproject
    stale = [k for k in declared if k.startswith(f"{name}.") and k not in defaults]
    assert not stale, f"pyproject declares keys {stale} that {name} does not have"


@pytest.mark.parametrize("name", channel_names())
def test_every_channel_key_is_declared_in_pyproject_with_its_default(name):
    declared = declared_config(APP)
    defaults = to_run_config(get_channel(name)(), prefix=name)
    for key, default in defaults.items():
        assert declared.get(key) == default, f"{key}: pyproject says {declared.get(key)!r}"
    stale = [k for k in declared if k.startswith(f"{name}.") and k not in defaults]
    assert not stale, f"pyproject declares keys {stale} that channel {name} does not have"


def test_every_prefixed_key_in_pyproject_belongs_to_a_registered_method_or_channel():
    prefixes = {k.split(".", 1)[0] for k in declared_config(APP) if "." in k}
    assert prefixes <= set(method_names()) | set(channel_names())
    assert not set(method_names()) & set(channel_names())  # one owner per prefix


def test_misspelt_key_is_rejected_with_a_suggestion():
    with pytest.raises(ConfigError, match="unknown run-config key 'num-server-round'. "
                                          "Did you mean num-server-rounds"):
        checked_run_config(APP, parse_overrides(["num-server-round=3"]))


def test_overrides_are_merged_over_declared_defaults():
    merged = checked_run_config(APP, parse_overrides(['lr=0.1 "dense.dtype"="fp16"']))
    assert merged["lr"] == 0.1 and merged["dense.dtype"] == "fp16"
    assert merged["method"] == "fedavg"


def test_app_dir_is_the_checkout_root():
    assert (APP / "pyproject.toml").is_file() and APP == Path(__file__).resolve().parents[2]
