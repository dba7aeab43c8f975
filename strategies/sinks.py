"""Results sinks: where each round's row goes besides the run's own files (a small hook for
experiment trackers).

A sink is any object with `write_round(row)` and `close()`. fedsqueeze's app gives every row
of `rounds.jsonl` to the sinks run-config `sinks` names (`"tensorboard"`, or a name a plugin
registered with `register_sink`: a factory `factory(run_dir) -> sink`). In your own Flower app,
`Compressed(strategy, ..., sinks=[TensorBoardSink("runs/x")])` gives them its rows: the bytes of
each round's train messages when their replies are aggregated, then the federated evaluation's
metrics (`{"round": t, "evaluate": {...}}`). A row holds what its writer knows; a sink takes
the keys it understands and ignores the rest.

`fedsqueeze deploy --app` sets `$FEDSQUEEZE_ROUNDS_LOG` for the ServerApp it starts; a
`Compressed` built without `sinks` then appends its rows there (`sinks_from_environment`), and
the launcher puts them into the run's results beside the wire bytes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from logging import WARNING
from pathlib import Path
from typing import Any, Protocol

from flwr.supercore import log

from .settings import ConfigError, register_in

ROUNDS_LOG_ENV = "FEDSQUEEZE_ROUNDS_LOG"
BYTE_LAYERS = ("payload", "bound", "message", "wire")
SCALARS = ("accuracy", "loss", "train_loss", "accuracy_local", "loss_local", "seconds")


class RoundSink(Protocol):
    def write_round(self, row: Mapping[str, Any]) -> None: ...

    def close(self) -> None: ...


SinkFactory = Callable[[Path], RoundSink]  # the run's results directory -> a sink
SINKS: dict[str, SinkFactory] = {}


def register_sink(name: str) -> Callable[[SinkFactory], SinkFactory]:
    """Decorator: `factory(run_dir) -> sink` becomes a name run-config `sinks` may list."""
    return register_in(SINKS, "sink", name)


def check_sinks(names: Iterable[str]) -> None:
    for name in names:
        if name not in SINKS:
            raise ConfigError(f"run-config 'sinks' names {name!r}: one of "
                              f"{', '.join(sorted(SINKS))} (or register yours with "
                              "register_sink in a plugin)")


def sinks_named(names: Iterable[str], run_dir: Path) -> list[RoundSink]:
    names = list(names)
    check_sinks(names)
    return [SINKS[name](run_dir) for name in names]


def deliver(sinks: list[RoundSink], row: Mapping[str, Any]) -> None:
    """`row` to each sink; one that fails is logged and dropped (a tracker's failure never
    stops the training or costs the run its results)."""
    for sink in list(sinks):
        try:
            sink.write_round(row)
        except Exception as err:
            log(WARNING, "results sink %r failed (%s: %s); it gets no more rows", sink,
                type(err).__name__, err)
            sinks.remove(sink)


def sinks_from_environment() -> list[RoundSink]:
    """A JSON-lines sink at `$FEDSQUEEZE_ROUNDS_LOG` when a launcher set it, else none."""
    path = os.environ.get(ROUNDS_LOG_ENV)
    return [JsonlSink(Path(path))] if path else []


class JsonlSink:
    """Each row as one line of JSON, appended and flushed at once (the file is created by the
    first row)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def write_round(self, row: Mapping[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as file:
            file.write(json.dumps(row, sort_keys=True, default=float) + "\n")

    def close(self) -> None:
        pass


def scalars_of(row: Mapping[str, Any]) -> dict[str, float]:
    """A row's numbers as TensorBoard tags: accuracy, loss, ...; `bytes/<layer>_<direction>`
    (payload, bound, message, wire); `metrics/<name>` (run-config `metrics`, central),
    `metrics_local/<name>` and `evaluate/<name>` (a wrapped strategy's federated evaluation)."""
    out: dict[str, float] = {}
    for key in SCALARS:
        if isinstance(row.get(key), (int, float)):
            out[key] = float(row[key])
    for layer in BYTE_LAYERS:
        for direction in ("up", "down"):
            value = row.get(f"{layer}_{direction}")
            if isinstance(value, (int, float)):
                out[f"bytes/{layer}_{direction}"] = float(value)
    for group in ("metrics", "metrics_local", "evaluate"):
        for name, value in (row.get(group) or {}).items():
            if isinstance(value, (int, float)):
                out[f"{group}/{name}"] = float(value)
    return out


class TensorBoardSink:
    """Scalars per round (`scalars_of`) in a TensorBoard log directory, through PyTorch's
    `SummaryWriter` (needs the `tensorboard` package: pip install 'fedsqueeze[tensorboard]')."""

    def __init__(self, logdir: Path | str) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise ConfigError(f"the tensorboard sink needs the tensorboard package ({err}): "
                              "pip install 'fedsqueeze[tensorboard]'") from None
        self.logdir = Path(logdir)
        self._writer = SummaryWriter(log_dir=str(self.logdir))

    def write_round(self, row: Mapping[str, Any]) -> None:
        for tag, value in scalars_of(row).items():
            self._writer.add_scalar(tag, value, global_step=int(row["round"]))
        self._writer.flush()  # a run that dies keeps every round it finished

    def close(self) -> None:
        self._writer.close()


@register_sink("tensorboard")
def _tensorboard(run_dir: Path) -> RoundSink:
    return TensorBoardSink(run_dir / "tensorboard")
