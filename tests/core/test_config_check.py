from pathlib import Path

import pytest

from fedsqueeze.deploy.config_check import (
    checked_run_config,
    declared_config,
    find_app_dir,
    parse_overrides,
)
from fedsqueeze.strategies.settings import ConfigError, RunSettings
from fedsqueeze.strategies.registry import get_method

APP = find_app_dir()


def test_every_settings_field_and_method_key_is_declared_in_pyproject():
    declared = declared_config(APP)
    settings = RunSettings.from_run_config(declared)
    method = get_method(settings.method)(settings, declared)
    from fedsqueeze.strategies.settings import to_run_config

    for key in [*to_run_config(settings), *method.run_config()]:
        assert key in declared, f"{key} missing from [tool.flwr.app.config]"


def test_misspelt_key_is_rejected_with_a_suggestion():
    with pytest.raises(ConfigError, match="unknown run-config key 'num-server-round'. "
                                          "Did you mean num-server-rounds"):
        checked_run_config(APP, parse_overrides(["num-server-round=3"]))


def test_overrides_are_merged_over_declared_defaults():
    merged = checked_run_config(APP, parse_overrides(['lr=0.1 "fedavg.dtype"="fp16"']))
    assert merged["lr"] == 0.1 and merged["fedavg.dtype"] == "fp16"
    assert merged["method"] == "fedavg"


def test_app_dir_is_the_checkout_root():
    assert (APP / "pyproject.toml").is_file() and APP == Path(__file__).resolve().parents[2]
