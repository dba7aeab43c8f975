"""The server half of a deployment: a SuperLink, its wire meters, the app's submission and the
wire bytes in the results. `fedsqueeze server` runs it on the server host, for SuperNodes on
other hosts; `fedsqueeze deploy` runs it with the client half (deploy/launch/nodes.py) on one host.

The SuperLink's Fleet API listens on loopback only. In front of it, one wire meter per
partition: partition p's SuperNode connects to `listen:port + p`, so every byte is attributed
to its SuperNode by the port it came in on, whether TLS hides the calls or not. Its control
API stays on loopback (`flwr run` is submitted from this host).
"""

from __future__ import annotations

import ipaddress
import json
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from fedsqueeze.server.doorbell import ENV as DOORBELLS
from fedsqueeze.server.results import read_rows
from fedsqueeze.strategies.sinks import ROUNDS_LOG_ENV

from ..accelerated.flower_internals import PARTS_OFF_ENV
from ..config_check import is_fedsqueeze_app
from ..wire.wire_meter import WireMeter
from ..wire.wire_results import add_wire_bytes, wire_by_node, write_any_app_results
from .auth import register
from .flower import (
    SERVERAPP_ENTRY,
    SuperLink,
    flower_env,
    shim_commands,
    start_superlink,
    write_connection,
)
from .lifecycle import LaunchResult, launching, run_app, write_deployment
from .processes import ProcessGroup, wait_until
from .tls import TlsFiles, make_certificates

WIRE_FILE = "wire.json"  # any app's deployment: wire bytes per SuperNode
ROUNDS_LOG = "compressed-rounds.jsonl"  # what a `Compressed` in any app logged


def server_env(group: ProcessGroup, work: Path, results_dir: Path, app_dir: Path,
               accelerated: bool, flower_off: tuple[str, ...]) -> dict[str, str]:
    """The environment of the server side's processes (SuperLink, ServerApp, `flwr`): Flower's
    home in `work`, the accelerated layer's parts (doorbells, the flwr-serverapp shim) unless
    stock or switched off, and for any app the log its `Compressed` writes its bytes to."""
    env = flower_env(work / "flwr-home")
    if not is_fedsqueeze_app(app_dir):  # a `Compressed` in the app's ServerApp logs here
        env[ROUNDS_LOG_ENV] = str(results_dir / ROUNDS_LOG)
    env[PARTS_OFF_ENV] = ",".join(flower_off)
    if accelerated:
        if "doorbells" not in flower_off:
            env[DOORBELLS] = f"fedsqueeze/{group.launch_id}"
        shim_commands(env, work / "bin", {"flwr-serverapp": SERVERAPP_ENTRY})
    return env


def open_meters(link: SuperLink, count: int, listen_host: str = "127.0.0.1",
                base_port: int = 0) -> list[WireMeter]:
    """One started wire meter per partition in front of the SuperLink's Fleet API: on
    `base_port + p` (free ports if `base_port` is 0)."""
    meters: list[WireMeter] = []
    try:
        for p in range(count):
            # resolution 0: every forwarded chunk keeps its own timestamp, so no chunk of a
            # round can be merged into an idle-poll bucket just before the round's window.
            meter = WireMeter(("127.0.0.1", link.fleet_port), name=f"supernode-{p}",
                              listen_host=listen_host, resolution=0.0,
                              listen_port=base_port + p if base_port else 0)
            meters.append(meter)
            meter.start()
    except OSError as err:
        stop_meters(meters)
        raise OSError(f"cannot listen on {listen_host}:{base_port + len(meters) - 1} for "
                      f"partition {len(meters) - 1}: {err}") from None
    return meters


def stop_meters(meters: list[WireMeter]) -> None:
    for meter in meters:
        meter.stop()


def write_wire_results(results_dir: Path, app_dir: Path, run_config: dict[str, object],
                       meters: list[WireMeter], status: dict, failure: BaseException | None,
                       launched: float) -> dict:
    """The meters' bytes into the run's results: fedsqueeze's app gets `wire_*` in its rows;
    any other app rows by round (from its messages) and `WIRE_FILE`, bytes per SuperNode."""
    if is_fedsqueeze_app(app_dir):
        if (results_dir / "rounds.jsonl").exists():
            return add_wire_bytes(results_dir, meters, status, since=launched)
    else:
        rounds_log = results_dir / ROUNDS_LOG
        logged = read_rows(rounds_log) if rounds_log.is_file() else []
        write_any_app_results(results_dir, app_dir, run_config, meters, logged, status,
                              failure)
    wire = {"by_node": wire_by_node(meters, status)}
    (results_dir / WIRE_FILE).write_text(json.dumps(
        {"flower_status": status, **wire["by_node"]}, indent=1))
    return wire


def this_hosts_names(extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    """What SuperNodes may call this host: loopback first (the control API), its name and
    fully qualified name, the IPv4 address of each of its interfaces, and `extra` (names it
    has behind NAT or in DNS); a certificate made here is valid for all of them."""
    names = ["127.0.0.1", "localhost", socket.gethostname(), socket.getfqdn(),
             *(a.address for addrs in psutil.net_if_addrs().values() for a in addrs
               if a.family == socket.AF_INET), *extra]
    return tuple(dict.fromkeys(n for n in names if n))


def certificates(directory: Path, names: tuple[str, ...]) -> tuple[TlsFiles, bool]:
    """The SuperLink's TLS files in `directory`: the ones there (your own CA's, or a
    previous server's, which the client hosts already hold), else a new throwaway CA and a
    certificate valid for `names`; (files, made now)."""
    files = TlsFiles(directory / "ca.crt", directory / "server.pem", directory / "server.key")
    present = [p.is_file() for p in (files.ca_cert, files.server_cert, files.server_key)]
    if all(present):
        return files, False
    if any(present):
        raise FileNotFoundError(f"{directory} has some of ca.crt, server.pem, server.key but "
                                "not all three")
    return make_certificates(directory, hosts=names, days=30), True


@dataclass(frozen=True)
class ServerOptions:
    clients: int                       # SuperNodes to wait for (partitions 0..clients-1)
    listen: str = "0.0.0.0"            # where the metering front listens
    port: int = 9092                   # partition p's SuperNode connects to port + p
    tls_dir: Path | None = None        # None: cleartext (--insecure)
    names: tuple[str, ...] = ()        # this host's names beyond its own (certificate)
    node_keys: tuple[Path, ...] = ()   # SuperNode public keys to register (auth when any)
    auth: bool = True
    wait_timeout: float = 600.0        # for every SuperNode to connect
    accelerated: bool = True
    flower_off: tuple[str, ...] = ()
    echo: bool = True

    def __post_init__(self) -> None:
        try:
            ipaddress.IPv4Address(self.listen)
        except ValueError:
            raise ValueError(f"--listen {self.listen!r}: an IPv4 address of this host "
                             "(0.0.0.0: all of them)") from None
        if not 0 < self.port <= 65536 - self.clients:
            last = self.port + self.clients - 1
            raise ValueError(f"--port {self.port}: ports {self.port}..{last} must be valid TCP "
                             "ports")
        if self.auth and self.tls_dir is None:
            raise ValueError("SuperNode authentication needs TLS (Flower refuses it in "
                             "cleartext): drop --insecure, or pass --no-auth as well")
        if self.auth and not self.node_keys:
            raise ValueError("SuperNode authentication is on: give the SuperNodes' public keys "
                             "(--node-keys FILE.pub ..., printed by `fedsqueeze client "
                             "--keys-only`), or --no-auth")

    def describe(self) -> dict[str, object]:
        return {"across_hosts": True, "listen": f"{self.listen}:{self.port}",
                "tls": self.tls_dir is not None, "auth": self.auth,
                "flower": "accelerated" if self.accelerated else "stock",
                "flower_off": list(self.flower_off), "supernodes": self.clients}


def _connected(meters: list[WireMeter]) -> list[int]:
    return [p for p, m in enumerate(meters) if m.active_connections]


def serve(app_dir: Path, run_config: dict[str, object], results_dir: Path,
          options: ServerOptions, say=print) -> LaunchResult:
    """Run the server side until the app ends: SuperLink, keys registered, metering front,
    wait for every SuperNode, submit, follow; the wire bytes go into the results however it
    ends. `say`: progress lines for the person at the console."""
    launched = time.time()
    with launching(results_dir) as launch:
        group = launch.group
        meters: list[WireMeter] = []

        def close_results() -> None:
            if meters:
                launch.wire = write_wire_results(results_dir, app_dir, run_config, meters,
                                                 launch.status, launch.failure, launched)
            write_deployment(results_dir, options.describe())

        launch.after_stop.append(lambda: stop_meters(meters))
        launch.after_settle.append(close_results)
        env = server_env(group, launch.work, results_dir, app_dir, options.accelerated,
                         options.flower_off)
        tls = None
        if options.tls_dir is not None:
            tls, made = certificates(options.tls_dir, this_hosts_names(options.names))
            say(f"TLS: {'made a throwaway CA, ' if made else ''}copy {tls.ca_cert} to every "
                "client host (fedsqueeze client --root-certificates ca.crt)")
        link = launch.link = start_superlink(
            group, env, simulation=False, tls=tls,
            extra=("--enable-supernode-auth",) if options.auth else (), rings=options.accelerated)
        write_connection(Path(env["FLWR_HOME"]), link)
        for key in options.node_keys:
            node_id = register(group, env, key)
            say(f"registered {key.name} (node id {node_id})")
        meters += open_meters(link, options.clients, options.listen, options.port)
        _wait_for_nodes(link, meters, options, say)
        launch.run_id, launch.status = run_app(group, env, link, app_dir, run_config,
                                               launch.logs, options.echo)
    return launch.result()


def _wait_for_nodes(link: SuperLink, meters: list[WireMeter], options: ServerOptions,
                    say) -> None:
    """Until a SuperNode is connected through every meter, with a line each time that
    changes; a timeout names the partitions (and ports) still missing."""
    say(f"waiting for {options.clients} SuperNodes on {options.listen}:{options.port}.."
        f"{options.port + options.clients - 1} (partition p on port {options.port} + p)")
    seen: list[int] = []

    def all_connected() -> bool:
        nonlocal seen
        if link.started.process.poll() is not None:
            raise RuntimeError("the SuperLink exited:\n" + link.started.log_tail())
        now = _connected(meters)
        if now != seen:
            seen = now
            say(f"{len(now)}/{options.clients} SuperNodes connected "
                f"(partitions {', '.join(map(str, now)) or 'none'})")
        return len(now) == options.clients

    try:
        wait_until(all_connected, timeout=options.wait_timeout, interval=0.5,
                   what="every SuperNode to connect")
    except TimeoutError:
        missing = sorted(set(range(options.clients)) - set(seen))
        raise TimeoutError(f"after {options.wait_timeout:.0f} s, no SuperNode for partitions "
                           f"{', '.join(map(str, missing))} connected "
                           f"(ports {', '.join(str(options.port + p) for p in missing)})"
                           ) from None
