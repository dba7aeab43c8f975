"""The run's strategy from run config: the method's Flower strategy, inside `Compressed` with
the run's channels when the method's messages carry the plain model.

    strategy, arrays = strategy_from_run_config(context.run_config)   # in any ServerApp
    strategy.start(grid=grid, initial_arrays=arrays, num_rounds=3)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flwr.app import ArrayRecord
from flwr.serverapp.strategy import Strategy
from torch import nn

from .base import Method
from .channel import DOWNLINK_KEY, UPLINK_KEY, Channel, channels_from_run_config
from .compressed import Compressed
from .registry import get_method
from .run_model import build_run_model
from .settings import ConfigError, RunSettings, UserValue
from .tensors import model_arrays, to_arrayrecord


def run_channels(method: Method, run_config: Mapping[str, UserValue]
                 ) -> tuple[Channel | None, Channel | None]:
    """(uplink, downlink) of the run; ConfigError for channels on a method that codes its
    own messages."""
    channels = channels_from_run_config(run_config, method.default_channel())
    if not method.plain:
        for key in (UPLINK_KEY, DOWNLINK_KEY):
            if run_config.get(key):
                raise ConfigError(f"run-config '{key}' = {run_config[key]!r} is invalid: "
                                  f"method {method.name!r} codes its own messages (its "
                                  f"'{method.name}.*' keys); channels compose with the methods "
                                  "whose messages carry the plain model")
        return None, None
    duplex = [c for c in channels if c.codes == "duplex"]
    if duplex and channels[0] != channels[1]:
        raise ConfigError(f"run-config '{UPLINK_KEY}' = {channels[0].name!r}, "
                          f"'{DOWNLINK_KEY}' = {channels[1].name!r} is invalid: channel "
                          f"{duplex[0].name!r} codes both directions: name it for both")
    if method.partial and channels[1].codes == "update":
        raise ConfigError(f"run-config '{DOWNLINK_KEY}' = {channels[1].name!r} is invalid: "
                          f"method {method.name!r} sends part of the model, and a versioned "
                          "downlink codes the change of the whole model clients hold")
    return channels


def build_strategy(method: Method, model: nn.Module, run_config: Mapping[str, UserValue], *,
                   meter: bool = True, **options: Any) -> Strategy:
    """`method`'s strategy for `model`, with the run's sampling, checks and channels;
    `options` override Flower's sampling arguments (fraction_train, min_train_nodes, ...)."""
    s = method.settings
    flower = {"fraction_train": s.fraction_train,
              "fraction_evaluate": 1.0 if s.local_test_fraction > 0 else 0.0,
              "min_train_nodes": s.min_nodes, "min_evaluate_nodes": 0,
              "min_available_nodes": s.min_nodes, **options}
    uplink, downlink = run_channels(method, run_config)
    if method.plain:
        return Compressed(method.strategy(model, **flower), uplink, downlink, seed=s.seed,
                          max_abs_value=s.max_abs_value, min_replies=s.min_nodes, meter=meter,
                          catchup=s.catchup_rounds)
    return method.strategy(model, **flower, min_replies=s.min_nodes,
                           max_abs_value=s.max_abs_value, exchange_timeout=s.round_timeout)


def strategy_from_run_config(run_config: Mapping[str, UserValue], **options: Any
                             ) -> tuple[Strategy, ArrayRecord]:
    """The run's strategy and the initial model (seeded) for Flower's `Strategy.start`."""
    settings = RunSettings.from_run_config(run_config)
    method = get_method(settings.method)(settings, run_config)
    model = build_run_model(settings, method.transform)
    return build_strategy(method, model, run_config, **options), to_arrayrecord(
        model_arrays(model))
