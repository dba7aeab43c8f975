"""Typed, validated views of Flower's run config.

Run config keys are kebab-case (`local-epochs`); a dataclass field `local_epochs` maps to the
key `local-epochs`, and a method's fields map to `<method>.<key>` (`fedsparsify.final-sparsity`).
Every value is checked before round 1 so that a bad value stops the run with one line that
names the key and the allowed range.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import math
import sys
import typing
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar

UserValue = bool | int | float | str

T = TypeVar("T")


class ConfigError(ValueError):
    """A run-config value is missing, of the wrong type, or out of range."""


def key_of(field_name: str, prefix: str = "") -> str:
    """The run-config key of a dataclass field (`local_epochs` -> `local-epochs`)."""
    key = field_name.replace("_", "-")
    return f"{prefix}.{key}" if prefix else key


def _coerce(key: str, value: Any, kind: type) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ConfigError(f"run-config '{key}' = {value!r} must be true or false")
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"run-config '{key}' = {value!r} must be an integer")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"run-config '{key}' = {value!r} must be a number")
        if not math.isfinite(value):
            raise ConfigError(f"run-config '{key}' = {value!r} must be finite")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"run-config '{key}' = {value!r} must be a string")
        return value
    raise TypeError(f"unsupported config field type {kind!r} for '{key}'")


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """The type of each field of a config dataclass, its postponed annotations resolved
    (cached: resolving them takes about a millisecond per class and call)."""
    return typing.get_type_hints(cls)


def from_run_config(cls: type[T], run_config: Mapping[str, UserValue], prefix: str = "") -> T:
    """Build the frozen dataclass `cls` from run config; missing keys keep their defaults.

    The dataclass's `__post_init__` does the range checks (see `check`).
    """
    hints = field_types(cls)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        key = key_of(field.name, prefix)
        if key in run_config:
            values[field.name] = _coerce(key, run_config[key], hints[field.name])
    return cls(**values)


def check(ok: bool, key: str, value: Any, allowed: str) -> None:
    """Raise a ConfigError naming `key`, its value and the allowed range unless `ok`."""
    if not ok:
        raise ConfigError(f"run-config '{key}' = {value!r} is invalid: {allowed}")


def check_choice(key: str, value: str, choices: list[str] | tuple[str, ...]) -> None:
    check(value in choices, key, value, "must be one of " + ", ".join(map(str, choices)))


def check_all(instance: Any, rules: Mapping[str, tuple[Callable[[Any], bool], str]],
              prefix: str = "") -> None:
    """Apply `{field: (predicate, allowed-text)}` rules to a config dataclass instance."""
    for name, (predicate, allowed) in rules.items():
        value = getattr(instance, name)
        check(predicate(value), key_of(name, prefix), value, allowed)


def to_run_config(instance: Any, prefix: str = "") -> dict[str, UserValue]:
    """The run-config keys and values of a config dataclass (for config.json and docs)."""
    return {key_of(f.name, prefix): getattr(instance, f.name)
            for f in dataclasses.fields(instance)}


def parse_int_set(key: str, text: str) -> frozenset[int]:
    """Parse `"1,3, 5"` into {1, 3, 5}; the empty string is the empty set."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    try:
        return frozenset(int(t) for t in items)
    except ValueError as err:
        raise ConfigError(
            f"run-config '{key}' = {text!r} is invalid: must be comma-separated integers"
        ) from err


@dataclasses.dataclass(frozen=True)
class MethodConfig:
    """Base of a method's frozen config dataclass (its `<method>.*` keys).

    `@register("name")` sets `prefix` to the method's name, so validators name their keys
    without repeating it: `self.check({"qe": (lambda v: 1 <= v <= 8, "must be in 1..8")})`
    reports `run-config 'resfed.qe' = 9 is invalid: must be in 1..8`.
    """

    prefix: ClassVar[str] = ""

    def key(self, field_name: str) -> str:
        return key_of(field_name, self.prefix)

    def check(self, rules: Mapping[str, tuple[Callable[[Any], bool], str]]) -> None:
        check_all(self, rules, prefix=self.prefix)

    def check_choice(self, field_name: str, choices: list[str] | tuple[str, ...]) -> None:
        check_choice(self.key(field_name), getattr(self, field_name), choices)

    def schedule(self, num_server_rounds: int) -> Any:
        """What the method does in which round of a run this long (FedSparsify's pruning
        schedule, FedDST's readjustment rounds), built once per run as `Method.schedule`, so
        that a schedule the keys make impossible is refused before the run; None: every
        round alike."""
        return None


def register_in(table: dict[str, Any], kind: str, name: str) -> Callable[[Any], Any]:
    """A decorator that enters what it decorates in `table` under `name` (the run-config
    registries of losses, optimizers, metrics and results sinks, and the paper claims); a
    name taken twice is an error, never a silent replacement."""
    def decorate(entry: Any) -> Any:
        if name in table:
            raise ValueError(f"{kind} {name!r} is already registered")
        table[name] = entry
        return entry
    return decorate


def names_in(text: str) -> tuple[str, ...]:
    """The names of a comma-separated run-config list (`"a, b"` -> ("a", "b"))."""
    return tuple(n.strip() for n in text.split(",") if n.strip())


def import_plugins(names: str) -> None:
    """Import the comma-separated modules of run-config `plugins` (each registers a user's
    models or datasets with `register_model` / `register_dataset` when imported); a module
    that cannot be imported is a ConfigError that says where it was looked for."""
    for name in names_in(names):
        if name in sys.modules:
            continue
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise ConfigError(
                f"run-config 'plugins': cannot import {name!r} ({err}); it must be importable "
                "in every process of the run (installed in the environment, or on PYTHONPATH, "
                "which fedsqueeze's launchers pass on to the processes they start)") from None


def checked(default: Any, predicate: Callable[[Any], bool], allowed: str) -> Any:
    """A run-config field with its rule: `lr: float = checked(0.02, lambda v: v > 0, "must be
    > 0")`; `RunSettings` checks every rule when built (`check_all`)."""
    return dataclasses.field(default=default, metadata={"rule": (predicate, allowed)})


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """Method-independent settings of a run (the keys without a method prefix)."""

    # what runs, and where its results go
    method: str = "fedavg"
    plugins: str = ""  # importable modules that register a user's models and datasets
    engine: str = ""
    run_name: str = ""
    results_dir: str = ""
    resume: bool = False
    checkpoint_every: int = checked(0, lambda v: v >= 0, "must be >= 0 (0 = no checkpoints)")
    seed: int = checked(0, lambda v: 0 <= v < 2**63, "must be in [0, 2^63)")
    # the data and its partitions
    dataset: str = "fashion-mnist"
    data_dir: str = ""
    data_download: bool = False
    input_scale: float = checked(255.0, lambda v: v > 0, "must be > 0")
    partitioner: str = "pathological"
    partition_classes: int = checked(2, lambda v: v >= 1, "must be >= 1")
    class_assignment: str = "random"
    dirichlet_alpha: float = checked(0.5, lambda v: v > 0, "must be > 0")
    shards_per_partition: int = checked(2, lambda v: v >= 1, "must be >= 1")
    shard_size: int = checked(20, lambda v: v >= 1, "must be >= 1")
    num_partitions: int = checked(0, lambda v: v >= 0, "must be >= 0 (0 = from node config)")
    local_test_fraction: float = checked(0.0, lambda v: 0 <= v < 1, "must be in [0, 1) (0 = off)")
    # the model
    model: str = "fc2"
    model_init: str = "default"
    model_transform: str = ""
    # the rounds: who takes part, what is waited for and refused
    num_server_rounds: int = checked(3, lambda v: v >= 1, "must be >= 1")
    fraction_train: float = checked(1.0, lambda v: 0 < v <= 1, "must be in (0, 1]")
    min_nodes: int = checked(2, lambda v: v >= 1, "must be >= 1")
    on_too_few_replies: str = "fail"
    round_timeout: float = checked(600.0, lambda v: v > 0, "must be > 0 seconds")
    server_poll_interval: float = checked(0.05, lambda v: 0 < v <= 10, "must be in (0, 10] seconds")
    catchup_rounds: int = checked(16, lambda v: v >= 0, "must be >= 0 (0 = no catch-up)")
    max_abs_value: float = checked(1e4, lambda v: v >= 0, "must be >= 0 (0 = no bound)")
    fail_partitions: str = ""
    # local training
    local_epochs: int = checked(1, lambda v: v >= 1, "must be >= 1")
    batch_size: int = checked(32, lambda v: v >= 1, "must be >= 1")
    lr: float = checked(0.02, lambda v: v > 0, "must be > 0")
    lr_decay: float = checked(1.0, lambda v: 0 < v <= 1, "must be in (0, 1]")
    momentum: float = checked(0.0, lambda v: 0 <= v < 1, "must be in [0, 1)")
    weight_decay: float = checked(0.0, lambda v: v >= 0, "must be >= 0")
    loss: str = "cross-entropy"  # a registered loss (strategies/training.py, or a plugin's)
    optimizer: str = "sgd"  # a registered optimizer (plain SGD with momentum, weight decay)
    client_threads: int = checked(1, lambda v: v >= 1, "must be >= 1")
    client_device: str = "auto"
    # evaluation and what each round reports to
    eval_every: int = checked(1, lambda v: v >= 1, "must be >= 1")
    eval_batch_size: int = checked(1000, lambda v: v >= 1, "must be >= 1")
    local_eval_every: int = checked(0, lambda v: v >= 0, "must be >= 0 (0 = off)")
    local_eval_clients: int = checked(0, lambda v: v >= 0, "must be >= 0 (0 = every client)")
    metrics: str = ""  # registered metrics evaluated beside loss and accuracy (comma-separated)
    sinks: str = ""  # registered results sinks each round's row also goes to (tensorboard)

    def __post_init__(self) -> None:
        check_all(self, {f.name: f.metadata["rule"] for f in dataclasses.fields(self)
                         if "rule" in f.metadata})
        check(self.local_eval_every == 0 or self.local_test_fraction > 0, "local-eval-every",
              self.local_eval_every, "needs local-test-fraction > 0 (each client's local "
              "test split)")
        check_choice("on-too-few-replies", self.on_too_few_replies, ("fail", "skip"))
        check_choice("client-device", self.client_device, ("auto", "cpu", "cuda"))
        check_choice("model-init", self.model_init, ("default", "glorot"))
        check_choice("model-transform", self.model_transform, ("", "fedpara", "pfedpara"))
        check_choice("engine", self.engine, ("", "simulation", "deployment"))
        check("/" not in self.run_name and self.run_name not in (".", ".."), "run-name",
              self.run_name, "must be a plain directory name (no '/', not '.' or '..')")
        parse_int_set("fail-partitions", self.fail_partitions)

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, UserValue]) -> RunSettings:
        """The settings of a run; first imports its `plugins` (every process that reads a run
        config comes here: the launcher, the ServerApp, each ClientApp, Ray's actors)."""
        import_plugins(str(run_config.get("plugins", "")))
        return from_run_config(cls, run_config)

    def partition_options(self) -> dict[str, Any]:
        """The partition scheme's parameters (keyword arguments of `partition_for`)."""
        return dict(classes_per_partition=self.partition_classes,
                    class_assignment=self.class_assignment, alpha=self.dirichlet_alpha,
                    shards_per_partition=self.shards_per_partition, shard_size=self.shard_size)

    def lr_at(self, server_round: int) -> float:
        """The learning rate of round t: lr x lr-decay^(t-1)."""
        return self.lr * self.lr_decay ** (server_round - 1)

    def evaluates_locally(self, server_round: int) -> bool:
        """Whether round t ends with a federated evaluation on the clients' local test splits
        (every `local-eval-every` rounds and after the last)."""
        every = self.local_eval_every
        return every > 0 and (server_round % every == 0 or server_round == self.num_server_rounds)

    @property
    def failing_partitions(self) -> frozenset[int]:
        """Partitions whose ClientApp raises on purpose (fault injection for tests)."""
        return parse_int_set("fail-partitions", self.fail_partitions)
