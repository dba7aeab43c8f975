"""Channels: how the arrays of one direction of a message travel, apart from any strategy.

A channel is a frozen dataclass whose fields are its constructor arguments (Flower's style:
`TopKEF(sparsity=0.999, values="fp16")`), registered by name with `@register_channel`; the
modules in `strategies/channels/` are found by discovery, so adding a channel is adding its
module. Two kinds:

- `codes = "model"`: the channel codes the arrays themselves (dense fp32/fp16/bf16/qN). It
  keeps no state.
- `codes = "update"`: the channel codes arrays minus a reference both sides hold (the model the
  client received), and the sender keeps what it did not deliver in an error memory when
  `error_feedback` is on (the uplink: `context.state`; as a downlink the server always keeps
  one, and codes the change of its broadcast model; see `strategies/compressed.py`).
- `codes = "duplex"`: the channel codes both directions against per-client state (ResFed's
  histories): it is given as uplink and downlink at once, and offers `link()` (the server's
  per-client side: `encode`, `decode`, `end_round`, `forget`, `export`, `restore`,
  `round_metrics`, `models`) and, for the client, `receive(content, state, shapes)` and
  `reply(arrays, pending, state)`.

One verb each way, on the tensors of one message in order (float32 numpy):

    encode(arrays, seed=, memory=) -> Coded      records of the message + the values the
                                                 receiver decodes, bit for bit
    decode(content, shapes, memory=) -> arrays   CodecError on anything malformed

`memory` says whether the sender keeps an error memory (an unbiased compressor must then be
made contractive, or the memory grows without bound); `seed` seeds a stochastic channel.

In run config a channel is `uplink = "<name>"` / `downlink = "<name>"` with its fields as
`<name>.<field>` keys (`channels_from_run_config`, the one function that builds them); in a
message header it is its `spec()`, "<name>" or "<name>:<field>=<value>,...".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from .registry import Registry
from .settings import ConfigError, MethodConfig, UserValue, field_types, from_run_config, key_of

Record = ConfigRecord | ArrayRecord
C = TypeVar("C", bound="type[Channel]")

UPLINK_KEY, DOWNLINK_KEY = "uplink", "downlink"


@dataclasses.dataclass
class Coded:
    """A channel's coding of one message: its records, and the arrays the receiver decodes
    (computed on first use where that needs a decode)."""

    records: dict[str, Record]
    _delivered: list[np.ndarray] | Callable[[], list[np.ndarray]]

    def delivered(self) -> list[np.ndarray]:
        if callable(self._delivered):
            self._delivered = self._delivered()
        return self._delivered


@dataclasses.dataclass(frozen=True)
class Channel(MethodConfig):
    """Base of every channel (see the module docstring)."""

    name: ClassVar[str] = ""
    codes: ClassVar[str] = "model"       # "model", "update" or "duplex"
    stochastic: ClassVar[bool] = False   # its encoding draws from `seed`

    @property
    def spreads_outliers(self) -> bool:
        """Whether a client's outlier entries reach the server spread over others (a shared
        per-tensor scale), below their value: a scaled update can then arrive inside
        `max-abs-value`, and robust aggregation (FedTrimmedAvg, Krum) is the defence."""
        return False

    @property
    def start_dtype(self) -> str:
        """An update channel as a downlink: the dense value format (`dense.dtype`) that the
        broadcast model starts in, its first full transfer (fp32: the model as given)."""
        return "fp32"

    @property
    def error_feedback(self) -> bool:
        """Whether a client keeps what this channel did not deliver (update channels)."""
        return False

    def encode(self, arrays: list[np.ndarray], *, seed: int = 0, memory: bool = False) -> Coded:
        raise NotImplementedError

    def decode(self, content: RecordDict, shapes: list[tuple[int, ...]], *,
               memory: bool = False) -> list[np.ndarray]:
        raise NotImplementedError

    def spec(self) -> str:
        """The channel as one string: its name and the fields that differ from defaults."""
        changed = [f"{key_of(f.name)}={_text(getattr(self, f.name))}"
                   for f in dataclasses.fields(self) if getattr(self, f.name) != f.default]
        return self.name + (":" + ",".join(changed) if changed else "")


def _text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


# --------------------------------------------------------------------------- registry
CHANNELS: Registry[type[Channel]] = Registry("channel", "fedsqueeze.strategies.channels",
                                             "channel")


def register_channel(name: str) -> Callable[[C], C]:
    """Class decorator: `@register_channel("topk-ef")` names the channel and gives its fields
    the run-config prefix `topk-ef.`."""
    return CHANNELS.registering(name, _name_channel)


def _name_channel(cls: type[Channel], name: str) -> None:
    cls.name = name
    cls.prefix = name


channel_names = CHANNELS.names  # the registered channels' names, sorted
get_channel = CHANNELS.find      # the class of a channel's name; a ConfigError lists the valid


def channels_from_run_config(run_config: Mapping[str, UserValue], default: str
                             ) -> tuple[Channel, Channel]:
    """(uplink, downlink) of a run: run config `uplink` / `downlink` name a channel whose
    fields are its `<name>.*` keys ("" = `default`, the method's). Every channel's keys in run
    config are checked, named or not."""
    built = {name: from_run_config(get_channel(name), run_config, prefix=name)
             for name in channel_names()}
    chosen = []
    for key in (UPLINK_KEY, DOWNLINK_KEY):
        name = str(run_config.get(key, "") or "") or default
        CHANNELS.find(name, f"run-config '{key}'")  # an unknown name is a ConfigError
        chosen.append(built[name])
    return chosen[0], chosen[1]


def channel_from_spec(spec: str) -> Channel:
    """The channel a header names (`Channel.spec`); CodecError-free: ConfigError on a bad one."""
    name, _, rest = spec.partition(":")
    cls = get_channel(name)
    types = field_types(cls)
    fields = {key_of(f.name): f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, _, text = item.partition("=")
        if key not in fields:
            raise ConfigError(f"channel {name!r} has no field {key!r}")
        kind = types[fields[key]]
        values[fields[key]] = (text == "true" if kind is bool else kind(text))
    return cls(**values)
