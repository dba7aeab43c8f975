"""Every Flower internal fedsqueeze touches, in one place, checked before use.

Flower 1.39 hard-codes the waits that dominate a small deployment's round (measured:
docs/deployment.md, "What each part buys"), and its SuperExec starts a fresh `flwr-clientapp`
interpreter per message. The launcher's processes (SuperNodes and the warm worker) change
exactly these:

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
* doorbells (`fedsqueeze.server.doorbell`), so a poll happens when there is work, not on a
  timer: in the SuperLink, `InMemoryLinkState.store_message_and_object_tree` rings the
  destination SuperNode's bell (`node/<node id>`) for an instruction and the ServerApp's
  (`serverapp/<run id>`) for a reply, once `InMemoryObjectStore.put` stored the message's last
  object (`inflatable_object.iterate_object_tree` lists them); in a SuperNode,
  `InMemoryNodeState.set_node_id` opens the node's bell, `InMemoryNodeState.store_message`
  and `InMemoryObjectStore.put` ring the bell of the SuperExec that serves its ClientApps
  once an instruction and its objects are stored, and wake the wait for the ClientApp's reply
  (the `time.sleep(0.5)` above, in the same process). With a bell, the timed waits are
  fallbacks and back off to `Waits.bell_cap`;
* `flwr.superlink.main._get_middleware`: the SuperLink's HTTP app wraps every request in
  four Control-API middlewares (`flwr.superlink.routers.control.middlewares`: sensitive
  response, authentication, license, event log), each a Starlette `BaseHTTPMiddleware` with a
  task group and memory streams per request, though on any other path they only call the
  next layer (the event-log one also logs there when a plugin is configured). The ServerApp's
  runtime requests (about a hundred per round) skip them: `ControlOnly` runs each for
  `/v1/control/` paths only (and the event-log one wherever a plugin is set), so Control-API
  requests see exactly Flower's stack;
* `flwr.supernode.main.create_app` and the SuperLink's `_get_middleware`: two more
  `BaseHTTPMiddleware` layers wrap every request of both HTTP APIs, Flower's error
  translation (`flwr.supercore.error.http.http_error_translator`) and protobuf translation
  (`flwr.supercore.protobuf.translation.ProtobufTranslationMiddleware`); a SuperNode serves
  about 13 runtime requests per ClientApp task, and those two layers took a quarter of its
  API server's CPU (py-spy). `RuntimeUnary` runs each layer's own `dispatch` for the unary
  runtime routes (`PROTOBUF_REQUEST_TYPES` under `/v1/runtime/`) without that machinery,
  and every other request through Flower's middleware as it is;
* `flwr.client.grpc_rere_client.connection.generate_key_pairs`: a SuperNode without a key
  file (always so without TLS) makes a NIST P-384 pair and signs every Fleet call with it,
  and the SuperLink verifies each signature; the launcher's SuperNodes make a P-256 pair
  instead (`auth.py` says why: a tenth of the signing and verifying CPU, 128-bit security);
* `flwr.superlink.grid.http_grid`: the ServerApp's `HttpGrid.send_and_receive` (what
  Flower's `Strategy.start` and any ServerApp that is not fedsqueeze's wait on) sleeps
  `time.sleep(3)` between reply pulls, so every exchange of such an app took at least 3 s;
  the module's `time` becomes a proxy whose 3 s sleep waits on the run's doorbell
  (`serverapp/<run id>`, rung by the SuperLink when a reply is stored; `HttpGrid.set_run`
  gives the run id) with a fallback poll, or backs off from `idle_poll` to `poll_cap`
  without a bell. fedsqueeze's own app waits on that bell through `MeteredGrid` and never
  calls this method;
* compact node auth: every Fleet call of a SuperNode carries Flower's node-auth metadata,
  `flwr-public-key-bin` (178 bytes of PEM for P-256), `flwr-timestamp` (32 characters of ISO
  time) and `flwr-signature-bin` (a DER signature), and gRPC sends custom metadata as
  literal, never-indexed HPACK headers: about 340 bytes per call, most of what a compressed
  round's calls add to its messages (bench/framing.py). The launcher's SuperNodes send
  Flower's headers on RegisterNode and ActivateNode only and, on every other call, one
  header `fsq-auth-bin` of the same facts in 80 bytes: the first 8 bytes of the key's
  SHA-256, the signed timestamp as 8 bytes of microseconds, the signature as raw r and s.
  The launcher's SuperLink (`NodeAuthServerInterceptor.intercept_service`) keeps the keys it
  has seen by id and puts Flower's three headers back into the call's metadata (the key, the
  timestamp's exact text, the DER signature) before Flower's own checks, which then verify
  the signature and the timestamp as always; an id it does not know is refused with
  `UNKNOWN_KEY_ID`, and the SuperNode repeats that call with Flower's headers. Those calls
  also leave out the runtime-version metadata (`flwr-package-name`, `-version`,
  `flwr-component-name`, another 100 bytes), which RegisterNode and ActivateNode carry and
  Flower's SuperLink checks there (it accepts calls without it, as from older SuperNodes). A
  stock SuperLink refuses the compact header as "Missing authentication metadata": the
  SuperNode then sends Flower's headers on every call from there on, so mixed deployments
  work either way round;
* `flwr.supercore.telemetry.create_event`: with telemetry off (`FLWR_TELEMETRY_ENABLED=0`,
  as the launcher sets it) and not logged, Flower still builds every event's payload, and
  `platform.architecture()` and `platform.processor()` in it run the `file` and `uname`
  programs: two events per ClientApp, each a fork and two program starts in the warm
  children (about 1 % of a warm round's CPU, measured with perf). The warm worker makes
  `create_event` return Flower's own "disabled" answer at once in that case.

Each check names what it looked for; `FlowerInternalsError` says which internal is missing
or changed. With `fallback=True` a missing internal leaves Flower's stock behaviour with one
warning line instead.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import hashlib
import importlib
import inspect
import os
import sys
import threading
import time as _time
from collections.abc import Callable
from types import ModuleType
from typing import Any

import flwr

from fedsqueeze.server.doorbell import Doorbell, bell_name, open_bell, ring
from fedsqueeze.strategies.settings import names_in

SUPPORTED_FLOWER = "1.39."

SUPERNODE_LOOP = "flwr.supernode.start_client_internal"
INFLATABLE = "flwr.supercore.inflatable.inflatable_utils"
PULL_FUNCTIONS = ("pull_objects", "pull_and_inflate_object_from_tree")
SUPEREXEC = "flwr.supercore.superexec.run_superexec"
CLIENTAPP_ENTRY = "flwr.supernode.runtime.run_clientapp"
HEARTBEAT_MODULES = ("flwr.client.grpc_rere_client.connection", "flwr.supercore.heartbeat")
HEARTBEAT_CONSTANT = "HEARTBEAT_DEFAULT_INTERVAL"
LINK_STATE = ("flwr.server.superlink.linkstate.in_memory_linkstate", "InMemoryLinkState")
NODE_STATE = ("flwr.supernode.nodestate.in_memory_nodestate", "InMemoryNodeState")
OBJECT_STORE = ("flwr.supercore.object_store.in_memory_object_store", "InMemoryObjectStore")
SUPERLINK_APP = "flwr.superlink.main"
CONTROL_MIDDLEWARES = ("flwr.superlink.routers.control.middlewares",
                       ("ControlSensitiveResponseMiddleware", "ControlAuthenticationMiddleware",
                        "ControlLicenseMiddleware", "ControlEventLogMiddleware"))
CONTROL_PATH_PREFIX = "/v1/control/"
TELEMETRY = "flwr.supercore.telemetry"
SUPERNODE_APP = "flwr.supernode.main"
TRANSLATION = ("flwr.supercore.protobuf.translation", "ProtobufTranslationMiddleware")
ERROR_TRANSLATOR = ("flwr.supercore.error.http", "http_error_translator")
RUNTIME_PATH_PREFIX = "/v1/runtime/"
FLEET_CONNECTION = "flwr.client.grpc_rere_client.connection"
EVENT_LOG_STATE = "control_event_log_plugin"
STOCK_IDLE_POLL, STOCK_REPLY_WAIT = 3, 0.5
SERVERAPP_GRID = ("flwr.superlink.grid.http_grid", "HttpGrid")
STOCK_GRID_REPLY_POLL = 3  # HttpGrid.send_and_receive: seconds between reply pulls


# The accelerated layer's parts, each switchable off (`fedsqueeze deploy --flower-off PART,...`
# sets PARTS_OFF_ENV for every process it starts); what each changes against stock Flower.
PARTS: dict[str, str] = {
    "waits": "SuperNode: the idle poll backs off from 0.02 s (Flower: 3 s always), the wait "
             "for the ClientApp's reply is 0.02 s (Flower: 0.5 s)",
    "doorbells": "the SuperLink rings a SuperNode or the ServerApp when their message is "
                 "stored, a SuperNode rings its SuperExec; waits sleep on the bell",
    "pull-backoff": "object pulls retry after 0.01 s, capped at 0.2 s (Flower: 1 s, doubling "
                    "to 10 s)",
    "heartbeat": "SuperNodes heartbeat every 10 s (Flower: 30 s): a dead one is noticed in "
                 "20 s, not 60 s",
    "p256": "a SuperNode's self-made key is P-256 (Flower: P-384)",
    "compact-auth": "after registering, SuperNodes send their key's 8-byte id, the timestamp "
                    "and a raw signature in one header, 80 bytes with P-256 keys, 112 with "
                    "P-384 (Flower: the whole key, an ISO timestamp and a DER signature, about "
                    "340 bytes, in every call)",
    "runtime-unary": "runtime API requests skip Starlette's per-request streams in Flower's "
                     "protobuf and error translation layers",
    "control-only": "the SuperLink's Control-API middlewares run for Control-API requests "
                    "only (and its runtime API's translation layers as in runtime-unary)",
    "warm-executor": "one warm worker per host forks each ClientApp from warm imports "
                     "(Flower: a new interpreter per message)",
    "telemetry": "disabled telemetry builds no event payload (Flower runs `file` and `uname` "
                 "for it)",
    "serverapp-reply-poll": "a ServerApp that is not fedsqueeze's wakes on its doorbell "
                            "between reply pulls (Flower: 3 s)",
}
PARTS_OFF_ENV = "FEDSQUEEZE_FLOWER_OFF"


def parts_off(text: str) -> tuple[str, ...]:
    """The parts a comma-separated list names; an unknown name is an error listing them."""
    names = names_in(text)
    unknown = [n for n in names if n not in PARTS]
    if unknown:
        raise ValueError(f"no part of the accelerated layer is named {', '.join(unknown)}: "
                         f"one of {', '.join(PARTS)}")
    return names


def part_on(name: str) -> bool:
    """Whether this process applies part `name` (not named in $FEDSQUEEZE_FLOWER_OFF)."""
    return name not in parts_off(os.environ.get(PARTS_OFF_ENV, ""))


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
    bell_cap: float = 2.0        # with a doorbell, idle polls are fallbacks: back off to this
    reply_fallback: float = 0.1  # SuperNode: reply wait, woken when the reply is stored
    reply_poll_fallback: float = 0.5  # ServerApp: reply pulls, woken by the run's doorbell


class IdleBackoff:
    """Sleeps that start at `first` after activity and double up to `cap` while idle.

    Activity is seen as a gap: when more than `cap` passed since the last idle sleep ended,
    work happened in between (a message was handled), so the next sleep starts short again.
    With a doorbell (`attach`), every sleep is the bell's own, longer cap, ended early by a
    ring: the polls are then only the fallback for a ring that never comes.
    """

    def __init__(self, first: float, cap: float, bell: Doorbell | None = None,
                 bell_cap: float = Waits.bell_cap) -> None:
        self.first, self.cap = first, max(cap, first)
        self.bell: Doorbell | None = None
        self._next = first
        self._ended = 0.0
        if bell is not None:
            self.attach(bell, bell_cap)

    def attach(self, bell: Doorbell, cap: float) -> None:
        self.bell, self.cap = bell, max(cap, self.first)

    def reset(self) -> None:
        self._next = self.first

    def sleep(self) -> None:
        if self.bell is not None:
            self.bell.wait(self.cap)
            return
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
    """A stand-in for a module's `time`: the idle poll backs off (and wakes on the node's
    doorbell once it has one), the reply wait shrinks (and wakes when `replied` is set)."""

    def __init__(self, waits: Waits) -> None:
        self.waits = waits
        self.idle = IdleBackoff(waits.idle_poll, waits.poll_cap)
        self.replied: threading.Event | None = None

    def sleep(self, seconds: float) -> None:
        if seconds == STOCK_IDLE_POLL:
            self.idle.sleep()
        elif seconds == STOCK_REPLY_WAIT:
            if self.replied is None:
                _time.sleep(self.waits.reply_wait)
            else:
                self.replied.wait(self.waits.reply_fallback)
                self.replied.clear()  # the caller checks its state after this returns
        else:
            _time.sleep(seconds)

    def __getattr__(self, name: str) -> Any:
        return getattr(_time, name)


def patch_supernode_waits(waits: Waits) -> _ScaledSleep:
    module = _module(SUPERNODE_LOOP)
    source = inspect.getsource(module)
    for literal in (f"time.sleep({STOCK_IDLE_POLL})", f"time.sleep({STOCK_REPLY_WAIT})"):
        if literal not in source:
            raise FlowerInternalsError(f"Flower {flwr.__version__}: {SUPERNODE_LOOP} no "
                                       f"longer calls {literal}")
    if _attribute(module, "time") is not _time and not isinstance(module.time, _ScaledSleep):
        raise FlowerInternalsError(f"{SUPERNODE_LOOP}.time is not the time module")
    module.time = _ScaledSleep(waits)
    return module.time


class _ReplyPoll:
    """A stand-in for the ServerApp grid module's `time`: the reply poll waits on the run's
    doorbell (opened at the first wait, once `run_id` is known), else backs off."""

    def __init__(self, waits: Waits) -> None:
        self.waits = waits
        self.run_id: int | None = None
        self.idle = IdleBackoff(waits.idle_poll, waits.poll_cap)
        self._opened = False

    def sleep(self, seconds: float) -> None:
        if seconds != STOCK_GRID_REPLY_POLL:
            _time.sleep(seconds)
            return
        if not self._opened and self.run_id is not None:
            self._opened = True
            bell = open_bell("serverapp", self.run_id)
            if bell is not None:
                self.idle.attach(bell, self.waits.reply_poll_fallback)
        self.idle.sleep()

    def __getattr__(self, name: str) -> Any:
        return getattr(_time, name)


def patch_serverapp_reply_poll(waits: Waits) -> _ReplyPoll:
    """Shorten `HttpGrid.send_and_receive`'s 3 s reply poll (see the module docstring)."""
    grid = _class(SERVERAPP_GRID)
    module = sys.modules[grid.__module__]
    literal = f"time.sleep({STOCK_GRID_REPLY_POLL})"
    if literal not in inspect.getsource(_attribute(grid, "send_and_receive")):
        raise FlowerInternalsError(f"Flower {flwr.__version__}: {SERVERAPP_GRID[1]}."
                                   f"send_and_receive no longer calls {literal}")
    if isinstance(module.time, _ReplyPoll):
        return module.time
    if _attribute(module, "time") is not _time:
        raise FlowerInternalsError(f"{module.__name__}.time is not the time module")
    poll = _ReplyPoll(waits)

    def run_set(_grid: Any, _result: None, run: Any) -> None:
        poll.run_id = int(run.run_id)

    _call_after(grid, "set_run", run_set)
    module.time = poll
    return poll


CLIENT_AUTH = ("flwr.client.grpc_rere_client.node_auth_client_interceptor",
               "NodeAuthClientInterceptor")
SERVER_AUTH = ("flwr.server.superlink.fleet.grpc_rere.node_auth_server_interceptor",
               "NodeAuthServerInterceptor")
AUTH_HEADER = "fsq-auth-bin"
UNKNOWN_KEY_ID = "fedsqueeze: unknown node key id"
KEY_CALLS = ("/flwr.proto.Fleet/RegisterNode", "/flwr.proto.Fleet/ActivateNode")
# the SuperNode's runtime version (Flower's `RuntimeVersionClientInterceptor`): checked on the
# key calls; Flower's SuperLink accepts calls without it
RUNTIME_KEYS = ("flwr-package-name", "flwr-package-version", "flwr-component-name")
MAX_KNOWN_KEYS = 1 << 16
KEY_ID_BYTES, STAMP_BYTES = 8, 8
AUTH_HEADER_NAMES = ("PUBLIC_KEY_HEADER", "TIMESTAMP_HEADER", "SIGNATURE_HEADER")  # Flower's
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
MICROSECOND = datetime.timedelta(microseconds=1)


def key_id(public_key: bytes) -> bytes:
    """A node key's short name: the first 8 bytes of its SHA-256."""
    return hashlib.sha256(public_key).digest()[:KEY_ID_BYTES]


def _stamp_text(micros: int) -> str:
    """Flower's timestamp text (`now().isoformat()`) of a time in microseconds since 1970."""
    return (EPOCH + micros * MICROSECOND).isoformat()


def compact_auth(public_key: bytes, timestamp: str, signature: bytes) -> bytes | None:
    """The compact header of one call's node-auth metadata: the key's id, the signed
    timestamp as microseconds since 1970 (8 bytes) and the ECDSA signature as raw r and s of
    equal width (Flower: DER); None when the timestamp is not one this form gives back
    exactly (the call then keeps Flower's headers)."""
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    try:
        micros = (datetime.datetime.fromisoformat(timestamp) - EPOCH) // MICROSECOND
        r, s = decode_dss_signature(signature)
    except (TypeError, ValueError):
        return None
    if _stamp_text(micros) != timestamp:
        return None
    width = (max(r.bit_length(), s.bit_length()) + 7) // 8
    return key_id(public_key) + micros.to_bytes(STAMP_BYTES, "big", signed=True) \
        + r.to_bytes(width, "big") + s.to_bytes(width, "big")


def expand_auth(header: bytes) -> tuple[bytes, str, bytes] | None:
    """(key id, timestamp text, DER signature) of a compact header; None if malformed."""
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    raw = header[KEY_ID_BYTES + STAMP_BYTES:]
    if len(raw) < 2 or len(raw) % 2:
        return None
    micros = int.from_bytes(header[KEY_ID_BYTES:KEY_ID_BYTES + STAMP_BYTES], "big",
                            signed=True)
    try:
        stamp = _stamp_text(micros)
    except OverflowError:
        return None
    half = len(raw) // 2
    signature = encode_dss_signature(int.from_bytes(raw[:half], "big"),
                                     int.from_bytes(raw[half:], "big"))
    return header[:KEY_ID_BYTES], stamp, signature


def patch_compact_node_auth() -> None:
    """SuperNode side of compact node auth (see the module docstring)."""
    cls = _class(CLIENT_AUTH)
    module = sys.modules[cls.__module__]
    key_header, stamp_header, signature_header = (_attribute(module, name)
                                                  for name in AUTH_HEADER_NAMES)
    stock = _attribute(cls, "intercept_unary_unary")
    stock = getattr(stock, "fedsqueeze_stock", stock)
    import grpc

    def intercept(self: Any, continuation: Callable[..., Any], details: Any, request: Any
                  ) -> Any:
        if not getattr(self, "fsq_compact_auth", True) or details.method in KEY_CALLS:
            return stock(self, continuation, details, request)

        def compacted(signed: Any, request: Any) -> Any:  # Flower's call, three headers -> one
            metadata = dict(signed.metadata)
            header = compact_auth(self.public_key_bytes, metadata.get(stamp_header, ""),
                                  metadata.get(signature_header, b""))
            if header is None:
                return continuation(signed, request)
            leave_out = {key_header, stamp_header, signature_header, *RUNTIME_KEYS}
            kept = [(k, v) for k, v in signed.metadata if k not in leave_out]
            return continuation(signed._replace(metadata=[*kept, (AUTH_HEADER, header)]),
                                request)

        call = stock(self, compacted, details, request)
        if call.code() != grpc.StatusCode.UNAUTHENTICATED:
            return call
        if call.details() != UNKNOWN_KEY_ID:  # a SuperLink that knows no compact auth
            self.fsq_compact_auth = False
        return stock(self, continuation, details, request)

    intercept.fedsqueeze_stock = stock  # type: ignore[attr-defined]
    cls.intercept_unary_unary = intercept


class _CallDetails:
    """A `grpc.HandlerCallDetails` with other metadata."""

    def __init__(self, method: str, invocation_metadata: tuple) -> None:
        self.method, self.invocation_metadata = method, invocation_metadata


def patch_compact_auth_server() -> None:
    """SuperLink side of compact node auth (see the module docstring)."""
    cls = _class(SERVER_AUTH)
    module = sys.modules[cls.__module__]
    terminator = _attribute(module, "_unary_unary_rpc_terminator")
    key_header, stamp_header, signature_header = (_attribute(module, name)
                                                  for name in AUTH_HEADER_NAMES)
    stock = _attribute(cls, "intercept_service")
    stock = getattr(stock, "fedsqueeze_stock", stock)
    known: dict[bytes, bytes] = {}

    def intercept_service(self: Any, continuation: Callable[..., Any], details: Any) -> Any:
        metadata = tuple(details.invocation_metadata or ())
        keys = [v for k, v in metadata if k == key_header]
        compact = [v for k, v in metadata if k == AUTH_HEADER]
        if keys and isinstance(keys[0], bytes):
            if len(known) >= MAX_KNOWN_KEYS:
                known.clear()
            known[key_id(keys[0])] = keys[0]
        elif compact and isinstance(compact[0], bytes):
            expanded = expand_auth(compact[0])
            if expanded is None:
                return terminator("Missing authentication metadata")
            public_key = known.get(expanded[0])
            if public_key is None:
                return terminator(UNKNOWN_KEY_ID)
            details = _CallDetails(details.method, (
                *metadata, (key_header, public_key), (stamp_header, expanded[1]),
                (signature_header, expanded[2])))
        return stock(self, continuation, details)

    intercept_service.fedsqueeze_stock = stock  # type: ignore[attr-defined]
    cls.intercept_service = intercept_service


def _class(where: tuple[str, str]) -> type:
    return _attribute(_module(where[0]), where[1])


def _call_after(cls: type, name: str, hook: Callable[..., None]) -> None:
    """Make `cls.name` call `hook(self, result, *args)` after Flower's own method returns."""
    original = _attribute(cls, name)
    if getattr(original, "fedsqueeze_hook", None) is not None:
        original = original.fedsqueeze_hook  # patched before in this process: re-patch

    @functools.wraps(original)
    def method(self, *args: Any, **kwargs: Any) -> Any:
        result = original(self, *args, **kwargs)
        hook(self, result, *args, **kwargs)
        return result

    method.fedsqueeze_hook = original  # type: ignore[attr-defined]
    setattr(cls, name, method)


class WhenComplete:
    """Rings a message's bell once every object of the message is in the object store.

    Flower stores a message before its objects are uploaded (it pushes the message, then each
    object). A ring at the message alone wakes the receiver to pull objects not there yet,
    and Flower's pulls then fail and retry: about 100 ServerApp object pulls per 10-SuperNode
    round for 70 objects, each an HTTP request on both sides (measured)."""

    MAX_PENDING = 10_000  # messages whose objects never come (a sender died) are dropped

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, tuple[str | None, set[str]]] = {}  # message -> bell, missing
        self._by_object: dict[str, set[str]] = {}                  # object -> its messages

    def expect(self, store: Any, message_id: str, object_ids: list[str],
               bell: str | None) -> None:
        with self._lock:  # checked and registered at once: no object arrives in between
            missing = {oid for oid in object_ids if not store.get(oid)}
            if missing:
                self._pending[message_id] = (bell, missing)
                for oid in missing:
                    self._by_object.setdefault(oid, set()).add(message_id)
                while len(self._pending) > self.MAX_PENDING:
                    self._forget(next(iter(self._pending)))
        if not missing:
            ring(bell)

    def arrived(self, object_id: str) -> None:
        ready = []
        with self._lock:
            for message_id in self._by_object.pop(object_id, ()):
                bell, missing = self._pending[message_id]
                missing.discard(object_id)
                if not missing:
                    del self._pending[message_id]
                    ready.append(bell)
        for bell in ready:
            ring(bell)

    def _forget(self, message_id: str) -> None:
        _, missing = self._pending.pop(message_id)
        for oid in missing:
            waiting = self._by_object.get(oid)
            if waiting is not None:
                waiting.discard(message_id)
                if not waiting:
                    del self._by_object[oid]


def _tree_ids_function() -> Callable[[Any], list[str]]:
    """The ids of every object in a message's object tree (Flower's `iterate_object_tree`,
    looked up when patching, so a Flower without it fails at start-up)."""
    iterate = _attribute(_module("flwr.supercore.inflatable.inflatable_object"),
                         "iterate_object_tree")
    return lambda tree: [node.object_id for node in iterate(tree)]


def patch_supernode_bells(waits: Waits, sleeper: _ScaledSleep, executor_bell: str | None
                          ) -> WhenComplete:
    """Doorbells in a SuperNode: its own (`node/<node id>`, opened once the SuperLink gave it
    an id), a ring for the SuperExec that serves its ClientApps (`executor_bell`) once an
    instruction and all its objects are stored, and a wake-up of the reply wait when the
    ClientApp stores its reply or an object of it."""
    node_state, object_store = _class(NODE_STATE), _class(OBJECT_STORE)
    _attribute(node_state, "object_store")
    not_in_store = _attribute(_module("flwr.supercore.object_store"), "NoObjectInStoreError")
    tree_ids = _tree_ids_function()
    replied = threading.Event()
    complete = WhenComplete()

    def opened(_state: Any, _result: None, node_id: int | None) -> None:
        bell = open_bell("node", node_id) if node_id is not None else None
        if bell is not None:
            sleeper.idle.attach(bell, waits.bell_cap)

    def stored(state: Any, result: str | None, message: Any) -> None:
        replied.set()
        if result is None or message.metadata.reply_to_message_id:  # not an instruction
            return
        store = state.object_store
        try:
            objects = tree_ids(store.get_object_tree(result))
        except not_in_store:  # stored without its objects preregistered: ring at once
            ring(executor_bell)
            return
        complete.expect(store, result, objects, executor_bell)

    def put(_store: Any, _result: None, object_id: str, *args: Any) -> None:
        replied.set()
        complete.arrived(object_id)

    _call_after(node_state, "set_node_id", opened)
    _call_after(node_state, "store_message", stored)
    _call_after(object_store, "put", put)
    sleeper.replied = replied
    return complete


def patch_superlink_rings() -> WhenComplete:
    """In the SuperLink: ring the destination's doorbell once a message and its objects are
    stored (a SuperNode's for an instruction, the ServerApp's for a reply)."""
    superlink = _attribute(_module("flwr.common.constant"), "SUPERLINK_NODE_ID")
    link_state, object_store = _class(LINK_STATE), _class(OBJECT_STORE)
    _attribute(link_state, "object_store")
    tree_ids = _tree_ids_function()
    complete = WhenComplete()

    def stored(state: Any, result: tuple[bool, list[str]], *args: Any, **kwargs: Any) -> None:
        if not result[0]:
            return
        message = args[0] if args else kwargs["message"]
        object_tree = args[1] if len(args) > 1 else kwargs["object_tree"]
        metadata = message.metadata
        bell = (bell_name("serverapp", metadata.run_id) if metadata.dst_node_id == superlink
                else bell_name("node", metadata.dst_node_id))
        complete.expect(state.object_store, metadata.message_id, tree_ids(object_tree), bell)

    _call_after(link_state, "store_message_and_object_tree", stored)
    _call_after(object_store, "put", lambda _s, _r, object_id, *a: complete.arrived(object_id))
    return complete


class ControlOnly:
    """An ASGI layer that runs one of the SuperLink's Control-API middlewares only where it
    does anything: on `/v1/control/` paths, and for the event-log one (`logs_events`)
    wherever the app has an event-log plugin. Every other request goes straight to the next
    layer."""

    def __init__(self, app: Any, control: type, logs_events: bool) -> None:
        self.app, self.control, self.logs_events = app, control(app), logs_events

    def _skips(self, scope: dict[str, Any]) -> bool:
        if scope["type"] != "http" or scope["path"].startswith(CONTROL_PATH_PREFIX):
            return False
        return not self.logs_events or getattr(scope["app"].state, EVENT_LOG_STATE, None) is None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await (self.app if self._skips(scope) else self.control)(scope, receive, send)


class RuntimeUnary:
    """An ASGI layer that runs one of Flower's `BaseHTTPMiddleware`s (given as its
    `Middleware` entry) for unary runtime requests without the task group and memory
    streams `BaseHTTPMiddleware` sets up per request: the middleware's own `dispatch` gets a
    `call_next` that runs the rest of the app to its end and returns the response it sent
    (for a protobuf route, Flower's empty placeholder or a JSON error), with the request
    body replayed to it. Other requests go through Flower's middleware unchanged."""

    def __init__(self, app: Any, stock: Any, unary_paths: frozenset[tuple[str, str]]) -> None:
        self.app, self.unary_paths = app, unary_paths
        self.stock = stock.cls(app, *stock.args, **stock.kwargs)
        self.dispatch = self.stock.dispatch_func

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or (scope["method"], scope["path"]) not in self.unary_paths:
            await self.stock(scope, receive, send)
            return
        from starlette.requests import Request

        response = await self.dispatch(Request(scope, receive), self._call_next)
        await response(scope, receive, send)

    async def _call_next(self, request: Any) -> Any:
        from starlette.responses import Response

        body = await request.body()
        pending = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> dict[str, Any]:
            return pending.pop() if pending else await request.receive()

        start: dict[str, Any] = {}
        chunks: list[bytes] = []

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(request.scope, receive, send)
        if not start:
            raise RuntimeError(f"{request.url.path}: the app sent no response")
        response = Response(b"".join(chunks), status_code=start["status"])
        response.raw_headers = list(start.get("headers", []))
        return response


def _runtime_unary_wrapper(owner: str) -> Callable[[list[Any]], list[Any]]:
    """Maps a middleware stack (`Middleware` entries) to one where Flower's protobuf and
    error translation (checked to exist now) are `RuntimeUnary` entries; a stack without
    both is reported as `owner`'s."""
    translation = _attribute(_module(TRANSLATION[0]), TRANSLATION[1])
    translator = _attribute(_module(ERROR_TRANSLATOR[0]), ERROR_TRANSLATOR[1])
    routes = _attribute(_module(TRANSLATION[0]), "PROTOBUF_REQUEST_TYPES")
    unary = frozenset(key for key in routes if key[1].startswith(RUNTIME_PATH_PREFIX))
    middleware_class = _attribute(_module("starlette.middleware"), "Middleware")

    def wrap(stack: list[Any]) -> list[Any]:
        wrapped = [middleware_class(RuntimeUnary, stock=entry, unary_paths=unary)
                   if entry.cls is translation or entry.kwargs.get("dispatch") is translator
                   else entry for entry in stack]
        if sum(entry.cls is RuntimeUnary for entry in wrapped) != 2:
            raise FlowerInternalsError(f"Flower {flwr.__version__}: the {owner}'s middleware "
                                       "stack has no protobuf and error translation")
        return wrapped

    return wrap


def patch_supernode_runtime_unary() -> None:
    """In a SuperNode: its runtime API's translation layers run as `RuntimeUnary`."""
    module = _module(SUPERNODE_APP)
    stock = _attribute(module, "create_app")
    wrap = _runtime_unary_wrapper("SuperNode")

    @functools.wraps(stock)
    def create_app(*args: Any, **kwargs: Any) -> Any:
        app = stock(*args, **kwargs)
        app.user_middleware = wrap(app.user_middleware)
        return app

    create_app(None)  # the stack is checked now, not at the SuperNode's start
    module.create_app = create_app


def patch_superlink_control_middleware() -> None:
    """In the SuperLink: the Control-API middlewares run for Control-API requests only
    (`ControlOnly`), the protobuf and error translation as `RuntimeUnary`."""
    module = _module(SUPERLINK_APP)
    stock = _attribute(module, "_get_middleware")
    where, names = CONTROL_MIDDLEWARES
    control = {_attribute(_module(where), name): name for name in names}
    middleware_class = _attribute(_module("starlette.middleware"), "Middleware")
    wrap = _runtime_unary_wrapper("SuperLink")

    def get_middleware() -> list[Any]:
        stack = stock()
        found = {m.cls for m in stack} & control.keys()
        if found != control.keys():
            missing = sorted(control[c] for c in control.keys() - found)
            raise FlowerInternalsError(f"Flower {flwr.__version__}: the SuperLink's middleware "
                                       f"stack has no {', '.join(missing)}")
        return wrap([middleware_class(ControlOnly, control=m.cls,
                                      logs_events=control[m.cls] == "ControlEventLogMiddleware")
                     if m.cls in control else m for m in stack])

    get_middleware()  # the stack is checked now, not at the SuperLink's start
    module._get_middleware = get_middleware


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


def patch_generated_node_key() -> None:
    """A SuperNode that makes its own key pair makes the launcher's kind (`auth.py`: P-256)."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from ..launch.auth import new_private_key

    module = _module(FLEET_CONNECTION)
    _attribute(module, "generate_key_pairs")

    def generate_key_pairs() -> tuple[ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey]:
        private_key = new_private_key()
        return private_key, private_key.public_key()

    module.generate_key_pairs = generate_key_pairs


def apply_waits(waits: Waits, *, supernode: bool, serverapp: bool = False,
                fallback: bool = False, executor_bell: str | None = None) -> bool:
    """Shorten Flower's waits in this process; True when applied. With `fallback`, a missing
    internal keeps Flower's stock waits and prints one warning line. A SuperNode also gets
    its doorbells (`executor_bell`: the name its SuperExec waits on, if any), a P-256 key
    pair when it makes its own and its runtime API's translation layers as `RuntimeUnary`; a
    ServerApp (`serverapp`) its grid's reply poll on the run's doorbell."""
    try:
        check_version()
        if supernode:
            if part_on("waits"):
                sleeper = patch_supernode_waits(waits)
                if part_on("doorbells"):
                    patch_supernode_bells(waits, sleeper, executor_bell)
            for part, patch in (("heartbeat", lambda: patch_heartbeat(waits)),
                                ("p256", patch_generated_node_key),
                                ("compact-auth", patch_compact_node_auth),
                                ("runtime-unary", patch_supernode_runtime_unary)):
                if part_on(part):
                    patch()
        if serverapp and part_on("serverapp-reply-poll"):
            patch_serverapp_reply_poll(waits)
        if part_on("pull-backoff"):
            patch_pull_backoff(waits)
    except FlowerInternalsError as err:
        if not fallback:
            raise
        print(f"fedsqueeze: WARNING: keeping Flower's stock waits: {err}", file=sys.stderr)
        return False
    return True


def skip_disabled_telemetry() -> bool:
    """With Flower's telemetry off and not logged, `create_event` answers "disabled" without
    building the payload it would drop; True when that applies here."""
    module = _module(TELEMETRY)
    enabled, logged = (_attribute(module, name) for name in ("FLWR_TELEMETRY_ENABLED",
                                                               "FLWR_TELEMETRY_LOGGING"))
    _attribute(module, "create_event")
    if enabled == "1" or logged == "1" or not part_on("telemetry"):
        return False
    module.create_event = lambda event_type, event_details=None: "disabled"
    return True


def import_task_modules() -> None:
    """Import Flower's SuperExec loop and ClientApp entry. The warm worker does this before it
    forks its SuperExecs, which then share these modules (FastAPI and pydantic among them:
    about 0.3 CPU-s and 12 MiB per SuperExec when each imported its own)."""
    for name in (SUPEREXEC, CLIENTAPP_ENTRY):
        _module(name)


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
    parent_pid, runtime_dependency_install)`."""
    check_version()
    module = _module(CLIENTAPP_ENTRY)
    entry = _attribute(module, "run_clientapp")
    wanted = {"runtime_api_address", "token", "insecure", "certificates", "parent_pid"}
    missing = wanted - set(inspect.signature(entry).parameters)
    if missing:
        raise FlowerInternalsError(f"Flower {flwr.__version__}: run_clientapp lacks "
                                   f"parameters {sorted(missing)}")
    return entry
