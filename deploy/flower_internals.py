"""Every Flower internal fedsqueeze touches, in one place, checked before use.

Flower 1.39 hard-codes the waits that dominate a small deployment's round (measured; see
ENVIRONMENT.md "Latency"), and its SuperExec starts a fresh `flwr-clientapp` interpreter per
message. The launcher's processes (SuperNodes and the warm worker) change exactly these:

* `flwr.supernode.start_client_internal`: `time.sleep(3)` after an empty PullMessages (idle
  poll) and `time.sleep(0.5)` while waiting for the ClientApp's reply; literal numbers, so the
  module's `time` is replaced by a proxy whose `sleep` maps those two values and passes every
  other call through (the source is checked to still contain both literals). The idle poll
  backs off: `idle_poll` after activity, doubling up to `poll_cap` while nothing comes (on a
  2-core box, 10 nodes polling every 0.05 s spend most of the CPU on polls);
* `flwr.supercore.inflatable.inflatable_utils.pull_objects` and
  `pull_and_inflate_object_from_tree`: the default `initial_backoff` (1 s, doubling) and
  `backoff_cap` (10 s) of object pulls, bound at import, so the functions' defaults change;
* `flwr.client.grpc_rere_client.connection.HEARTBEAT_DEFAULT_INTERVAL` and
  `flwr.supercore.heartbeat.HEARTBEAT_DEFAULT_INTERVAL` (30 s, bound at import): the interval
  a SuperNode announces and keeps; the SuperLink declares a node dead after twice that, and
  only then answers for its messages, so a killed SuperNode costs its round 60 s with
  Flower's value and 20 s with ours (10 s, the least the SuperLink accepts);
* `flwr.supercore.superexec.run_superexec.get_executor`: the executor SuperExec launches
  tasks with (the warm worker's fork executor instead of a subprocess per task);
* `flwr.supernode.runtime.run_clientapp.run_clientapp`: Flower's own ClientApp entry, which a
  forked child runs (token protocol, FAB, context.state and error replies stay Flower's);
* `flwr.supernode.runtime.run_clientapp.install_from_fab`: Flower extracts the whole FAB to
  a temporary folder and hashes every file for every message, and only then sees the app is
  installed already and returns its folder (half a ClientApp child's CPU for fc2, measured);
  the warm children return that folder at once when it exists for this FAB's hash, exactly
  what Flower's own early return gives, and install through Flower otherwise.

Each check names what it looked for; `FlowerInternalsError` says which internal is missing
or changed. With `fallback=True` a missing internal leaves Flower's stock behaviour with one
warning line instead.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import inspect
import sys
import time as _time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import flwr

SUPPORTED_FLOWER = "1.39."

SUPERNODE_LOOP = "flwr.supernode.start_client_internal"
INFLATABLE = "flwr.supercore.inflatable.inflatable_utils"
PULL_FUNCTIONS = ("pull_objects", "pull_and_inflate_object_from_tree")
SUPEREXEC = "flwr.supercore.superexec.run_superexec"
CLIENTAPP_ENTRY = "flwr.supernode.runtime.run_clientapp"
HEARTBEAT_MODULES = ("flwr.client.grpc_rere_client.connection", "flwr.supercore.heartbeat")
HEARTBEAT_CONSTANT = "HEARTBEAT_DEFAULT_INTERVAL"
STOCK_IDLE_POLL, STOCK_REPLY_WAIT = 3, 0.5


class FlowerInternalsError(RuntimeError):
    """A Flower internal that fedsqueeze relies on is missing or changed."""


@dataclasses.dataclass(frozen=True)
class Waits:
    """The waits the launcher's processes use instead of Flower's (seconds)."""

    idle_poll: float = 0.02      # SuperNode: first poll after activity (Flower: always 3)
    poll_cap: float = 0.25       # SuperNode and warm SuperExec: idle polls back off to this
    reply_wait: float = 0.02     # SuperNode: while the ClientApp computes (Flower: 0.5)
    pull_backoff: float = 0.01   # object pulls: first retry delay (Flower: 1, doubling)
    pull_backoff_cap: float = 0.2  # object pulls: largest retry delay (Flower: 10)
    heartbeat_interval: float = 10.0  # SuperNode heartbeats (Flower: 30; SuperLink's least: 10)


class IdleBackoff:
    """Sleeps that start at `first` after activity and double up to `cap` while idle.

    Activity is seen as a gap: when more than `cap` passed since the last idle sleep ended,
    work happened in between (a message was handled), so the next sleep starts short again.
    """

    def __init__(self, first: float, cap: float) -> None:
        self.first, self.cap = first, max(cap, first)
        self._next = first
        self._ended = 0.0

    def reset(self) -> None:
        self._next = self.first

    def sleep(self) -> None:
        if _time.monotonic() - self._ended > self.cap:
            self._next = self.first
        _time.sleep(self._next)
        self._next = min(self._next * 2, self.cap)
        self._ended = _time.monotonic()


def _module(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as err:
        raise FlowerInternalsError(f"Flower {flwr.__version__} has no module {name}") from err


def _attribute(module: ModuleType, name: str) -> Any:
    if not hasattr(module, name):
        raise FlowerInternalsError(f"Flower {flwr.__version__}: {module.__name__} has no "
                                   f"attribute {name!r}")
    return getattr(module, name)


def check_version() -> None:
    if not flwr.__version__.startswith(SUPPORTED_FLOWER):
        raise FlowerInternalsError(f"Flower {flwr.__version__} is installed; the waits and "
                                   f"the warm executor are written for {SUPPORTED_FLOWER}x")


class _ScaledSleep:
    """A stand-in for a module's `time`: the idle poll backs off, the reply wait shrinks."""

    def __init__(self, waits: Waits) -> None:
        self._idle = IdleBackoff(waits.idle_poll, waits.poll_cap)
        self._reply_wait = waits.reply_wait

    def sleep(self, seconds: float) -> None:
        if seconds == STOCK_IDLE_POLL:
            self._idle.sleep()
        elif seconds == STOCK_REPLY_WAIT:
            _time.sleep(self._reply_wait)
        else:
            _time.sleep(seconds)

    def __getattr__(self, name: str) -> Any:
        return getattr(_time, name)


def patch_supernode_waits(waits: Waits) -> None:
    module = _module(SUPERNODE_LOOP)
    source = inspect.getsource(module)
    for literal in (f"time.sleep({STOCK_IDLE_POLL})", f"time.sleep({STOCK_REPLY_WAIT})"):
        if literal not in source:
            raise FlowerInternalsError(f"Flower {flwr.__version__}: {SUPERNODE_LOOP} no "
                                       f"longer calls {literal}")
    if _attribute(module, "time") is not _time and not isinstance(module.time, _ScaledSleep):
        raise FlowerInternalsError(f"{SUPERNODE_LOOP}.time is not the time module")
    module.time = _ScaledSleep(waits)


def patch_pull_backoff(waits: Waits) -> None:
    module = _module(INFLATABLE)
    for name in PULL_FUNCTIONS:
        function = _attribute(module, name)
        defaults = function.__kwdefaults__ or {}
        for arg in ("initial_backoff", "backoff_cap"):
            if arg not in defaults:
                raise FlowerInternalsError(f"Flower {flwr.__version__}: {INFLATABLE}.{name} "
                                           f"has no keyword-only default {arg!r}")
        function.__kwdefaults__ = {**defaults, "initial_backoff": waits.pull_backoff,
                                   "backoff_cap": waits.pull_backoff_cap}


def patch_heartbeat(waits: Waits) -> None:
    least = _attribute(_module("flwr.common.constant"), "HEARTBEAT_MIN_INTERVAL")
    if waits.heartbeat_interval < least:
        raise FlowerInternalsError(f"heartbeat interval {waits.heartbeat_interval} s is below "
                                   f"the {least} s the SuperLink accepts")
    modules = [_module(name) for name in HEARTBEAT_MODULES]
    for module in modules:
        _attribute(module, HEARTBEAT_CONSTANT)
    for module in modules:
        setattr(module, HEARTBEAT_CONSTANT, waits.heartbeat_interval)


def apply_waits(waits: Waits, *, supernode: bool, fallback: bool = False) -> bool:
    """Shorten Flower's waits in this process; True when applied. With `fallback`, a missing
    internal keeps Flower's stock waits and prints one warning line."""
    try:
        check_version()
        if supernode:
            patch_supernode_waits(waits)
            patch_heartbeat(waits)
        patch_pull_backoff(waits)
    except FlowerInternalsError as err:
        if not fallback:
            raise
        print(f"fedsqueeze: WARNING: keeping Flower's stock waits: {err}", file=sys.stderr)
        return False
    return True


def install_executor(make_executor: Callable[..., Any]) -> Callable[..., None]:
    """Make SuperExec launch tasks with `make_executor()`; returns Flower's `run_superexec`."""
    check_version()
    module = _module(SUPEREXEC)
    _attribute(module, "get_executor")
    run_superexec = _attribute(module, "run_superexec")
    if "executor_type" not in inspect.signature(run_superexec).parameters:
        raise FlowerInternalsError(f"Flower {flwr.__version__}: run_superexec takes no "
                                   "executor_type")
    module.get_executor = lambda *args, **kwargs: make_executor()
    return run_superexec


def clientapp_entry() -> Callable[..., None]:
    """Flower's own `run_clientapp(runtime_api_address, token, insecure, certificates,
    parent_pid, runtime_dependency_install)`, with an installed FAB not extracted again."""
    check_version()
    module = _module(CLIENTAPP_ENTRY)
    entry = _attribute(module, "run_clientapp")
    wanted = {"runtime_api_address", "token", "insecure", "certificates", "parent_pid"}
    missing = wanted - set(inspect.signature(entry).parameters)
    if missing:
        raise FlowerInternalsError(f"Flower {flwr.__version__}: run_clientapp lacks "
                                   f"parameters {sorted(missing)}")
    install = _attribute(module, "install_from_fab")
    if not getattr(install, "skips_installed", False):
        module.install_from_fab = _skipping_installed(install)
    return entry


def _skipping_installed(install: Callable[..., Path]) -> Callable[..., Path]:
    config = _module("flwr.common.config")
    fab_config, metadata, project_dir = (_attribute(config, name) for name in (
        "get_fab_config", "get_metadata_from_config", "get_project_dir"))

    def install_from_fab(fab_file: Path | bytes, install_dir: Path | None = None,
                         skip_prompt: bool = False) -> Path:
        if isinstance(fab_file, bytes) and install_dir is None and skip_prompt:
            fab_id, version = metadata(fab_config(fab_file))
            installed = project_dir(fab_id, version, hashlib.sha256(fab_file).hexdigest())
            if installed.is_dir():
                return installed
        return install(fab_file, install_dir, skip_prompt)

    install_from_fab.skips_installed = True  # type: ignore[attr-defined]
    return install_from_fab
