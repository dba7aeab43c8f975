"""`fedsqueeze deploy`: one SuperLink and N SuperNodes as real processes talking gRPC.

Every SuperNode reaches the SuperLink's Fleet API (gRPC-rere over HTTP/2) through a
byte-counting TCP relay of its own (the wire meter), gets `partition-id=i num-partitions=N` as
node config and, with `--gpus`, `CUDA_VISIBLE_DEVICES` round-robin over the given GPUs. The app
is submitted with `flwr run`; when it ends, the relays' bytes are attributed to rounds and
written into the run's results. Every process started, and all their descendants, are
stopped on success, failure and Ctrl-C.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fedsqueeze.server.doorbell import ENV as DOORBELLS
from fedsqueeze.server.results import read_rows
from fedsqueeze.strategies.sinks import ROUNDS_LOG_ENV

from .auth import make_node_key, register
from .config_check import is_fedsqueeze_app
from .faults import FaultInjector, Kill
from .flower import (
    SERVERAPP_ENTRY,
    SUPERNODE_ENTRY,
    WARM_WORKER_ENTRY,
    SuperLink,
    flower_command,
    flower_env,
    free_port,
    require_grpc_flower,
    shim_commands,
    start_superlink,
    write_connection,
)
from .flower_internals import PARTS_OFF_ENV, parts_off
from .launch import LaunchResult, launch_dir, run_app, settle_status
from .processes import ProcessGroup, Started, sigterm_as_interrupt, wait_until
from .tls import make_certificates
from .wire_meter import WireMeter
from .wire_results import add_wire_bytes, wire_by_node, write_any_app_results

# Public latency knob of Flower 1.39: how often a SuperExec polls for new tasks (default 1 s).
# Stock executor: a fixed 0.05 s; warm worker: 0.01 s, its own idle back-off (and doorbell)
# doing the rest; the SuperLink's SuperExec, which only starts the ServerApp: 0.5 s.
TUNED_SUPEREXEC_POLL = "0.05"
WARM_SUPEREXEC_POLL = "0.01"
LINK_SUPEREXEC_POLL = "0.5"


def poll_cap(supernodes: int) -> float:
    """The longest idle poll: 0.25 s, longer with many nodes, so that polling stays a small
    share of a 2-core box's CPU (each poll is a gRPC and an HTTP call in Python)."""
    return max(0.25, 0.025 * supernodes)


EXECUTORS = ("warm", "stock")
WIRE_FILE = "wire.json"  # any app's deployment: wire bytes per SuperNode
ROUNDS_LOG = "compressed-rounds.jsonl"  # what a `Compressed` in any app logged


FLOWERS = ("accelerated", "stock")  # deploy/flower_internals.py's layer, or Flower as it is


@dataclass(frozen=True)
class DeployOptions:
    clients: int
    gpus: tuple[str, ...] = ()
    tls: bool = False
    flower: str = "accelerated"  # the SuperLink and ServerApp: with fedsqueeze's Flower
                                 # patches, shims and doorbells, or Flower's own (stock)
    supernode_flower: str = ""   # the SuperNodes ("": as `flower`; else a mixed deployment)
    executor: str = ""           # warm: one forking worker; stock: a process per message
                                 # ("": warm with accelerated SuperNodes, else stock)
    flower_off: tuple[str, ...] = ()  # parts of the accelerated layer left out (PARTS)
    echo: bool = True
    auth: bool = False           # SuperNode authentication: a registered key per SuperNode
    unregistered: int = 0        # with auth: this many extra SuperNodes whose keys are never
                                 # registered (the SuperLink must refuse them; for tests)
    kills: tuple[Kill, ...] = ()         # fault injection: SIGKILL these SuperNodes mid-round
    restart_after: float | None = None   # ... and start them again after this many seconds

    def __post_init__(self) -> None:
        for name in ("flower", "supernode_flower"):
            if getattr(self, name) not in (*FLOWERS, "" if name == "supernode_flower" else None):
                raise ValueError(f"--{name.replace('_', '-')} {getattr(self, name)!r}: one of "
                                 f"{', '.join(FLOWERS)}")
        if not self.supernode_flower:
            object.__setattr__(self, "supernode_flower", self.flower)
        parts_off(",".join(self.flower_off))  # names checked
        if not self.executor:
            warm = self.accelerated_nodes and "warm-executor" not in self.flower_off
            object.__setattr__(self, "executor", "warm" if warm else "stock")
        if self.executor not in EXECUTORS:
            raise ValueError(f"--executor {self.executor!r}: one of {', '.join(EXECUTORS)}")
        if self.unregistered and not self.auth:
            raise ValueError("unregistered SuperNodes only make sense with auth")
        if self.auth and not self.tls:
            raise ValueError("SuperNode authentication needs TLS (Flower refuses it in "
                             "cleartext)")

    @property
    def accelerated_server(self) -> bool:
        return self.flower == "accelerated"

    @property
    def accelerated_nodes(self) -> bool:
        return self.supernode_flower == "accelerated"

    def describe(self) -> dict[str, object]:
        """What config.json records about how the deployment ran."""
        return {"executor": self.executor, "flower": self.flower,
                "supernode_flower": self.supernode_flower, "flower_off": list(self.flower_off),
                "auth": self.auth,
                **({"kills": [f"{k.round}:{','.join(map(str, k.partitions))}"
                              for k in self.kills],
                    "restart_after": self.restart_after} if self.kills else {})}


@dataclass
class SuperNode:
    started: Started
    runtime_address: str   # its ClientApp (runtime) API
    gpus: str | None
    relay_port: int        # its wire meter, in front of the SuperLink's Fleet API


def _start_supernode(group: ProcessGroup, env: dict[str, str], index: int,
                     options: DeployOptions, relay_port: int, security: list[str]) -> SuperNode:
    node_env = dict(env)
    gpus = options.gpus[index % len(options.gpus)] if options.gpus else None
    if gpus is not None:
        node_env["CUDA_VISIBLE_DEVICES"] = gpus
    runtime_port = free_port()
    flower_args = [*security, "--grpc-rere", "--superlink", f"127.0.0.1:{relay_port}",
                   "--host", "127.0.0.1", "--port", str(runtime_port),
                   "--node-config", f"partition-id={index} num-partitions={options.clients}"]
    if options.executor == "warm":
        flower_args += ["--isolation", "process"]  # our worker serves its ClientApp API
    if options.accelerated_nodes:
        bell = (["--executor-bell", f"127.0.0.1:{runtime_port}"]
                if options.executor == "warm" else [])
        command = [sys.executable, "-m", SUPERNODE_ENTRY,
                   "--poll-cap", str(poll_cap(options.clients)), *bell, "--", *flower_args]
    else:
        command = [flower_command("flower-supernode"), *flower_args]
    started = group.start(f"supernode-{index}", command, node_env)
    return SuperNode(started, f"127.0.0.1:{runtime_port}", gpus, relay_port)


def _start_warm_worker(group: ProcessGroup, env: dict[str, str], nodes: list[SuperNode],
                       options: DeployOptions, slot_dir: Path, name: str = "warm-worker"
                       ) -> Started:
    """One worker for every SuperNode of this host (they share its imported pages); the
    workers of one launch share the --max-running and --max-reading slots."""
    command = [sys.executable, "-m", WARM_WORKER_ENTRY, "--insecure",
               "--poll-cap", str(poll_cap(options.clients)), "--slot-dir", str(slot_dir)]
    if not options.accelerated_nodes:
        command.append("--stock-latency")
    for node in nodes:
        serve = f"{node.runtime_address},parent={node.started.process.pid}"
        command += ["--serve", serve + (f",gpus={node.gpus}" if node.gpus is not None else "")]
    worker_env = dict(env)
    if options.accelerated_nodes and "task-poll" not in options.flower_off:
        worker_env["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] = WARM_SUPEREXEC_POLL
    return group.start(name, command, worker_env)


def _registered(node: SuperNode) -> bool:
    started = node.started
    if started.process.poll() is not None:
        raise RuntimeError(f"{started.name} exited with code {started.process.poll()}:\n"
                           + started.log_tail())
    return "SuperNode ID" in started.log_path.read_text(errors="replace")


def record_deployment(results_dir: Path, options: DeployOptions,
                      faults: FaultInjector | None = None) -> None:
    """config.json says which executor and which waits ran (and what faults were injected)."""
    path = results_dir / "config.json"
    if path.is_file():
        config = json.loads(path.read_text())
        config["deployment"] = {**options.describe(), "supernodes": options.clients,
                                "tls": options.tls, "gpus": list(options.gpus),
                                **({"fault_events": faults.events,
                                    "fault_errors": faults.errors} if faults else {})}
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        tmp.replace(path)


def _node_keys(group: ProcessGroup, env: dict[str, str], link: SuperLink,
               options: DeployOptions, work: Path) -> list[list[str]]:
    """SuperNode arguments for authentication: a key per SuperNode, the first `clients`
    registered with the SuperLink (nothing without auth)."""
    total = options.clients + options.unregistered
    if not options.auth:
        return [[] for _ in range(total)]
    write_connection(Path(env["FLWR_HOME"]), link)
    keys = [make_node_key(work / "keys", f"supernode-{i}") for i in range(total)]
    for key in keys[:options.clients]:
        register(group, env, key)
    return [key.supernode_args() for key in keys]


def _fault_injector(group: ProcessGroup, env: dict[str, str], nodes: list[SuperNode],
                    options: DeployOptions, security_of: Callable[[int], list[str]],
                    work: Path, results_dir: Path) -> FaultInjector:
    restarts = {"n": 0}

    def restart(partition: int) -> None:
        node = _start_supernode(group, env, partition, options, nodes[partition].relay_port,
                                security_of(partition))
        if options.executor == "warm":
            restarts["n"] += 1
            _start_warm_worker(group, env, [node], options, work / "slots",
                               name=f"warm-worker-restart-{restarts['n']}")
        nodes[partition] = node

    return FaultInjector(list(options.kills), options.restart_after,
                         results_dir / "rounds.jsonl", lambda p: nodes[p].started, restart)


def deploy(app_dir: Path, run_config: dict[str, object], results_dir: Path,
           options: DeployOptions) -> LaunchResult:
    """Run one deployment to its end; fedsqueeze's app needs `results-dir` and `run-name` in
    `run_config` (its rows get wire bytes per round); any other app gets rows by round in
    `results_dir` (`write_any_app_results`) and `WIRE_FILE`, its wire bytes per SuperNode.

    However it ends (also by Ctrl-C or SIGTERM), every process is stopped, summary.json says
    how it ended and the finished rounds get their wire bytes."""
    require_grpc_flower()
    launched = time.time()
    work = launch_dir(results_dir)
    logs = results_dir / "logs"
    env = flower_env(work / "flwr-home")
    group = ProcessGroup(logs)
    ours = is_fedsqueeze_app(app_dir)
    rounds_log = results_dir / ROUNDS_LOG
    if not ours:  # a `Compressed` in the app's ServerApp logs its bytes per round here
        env[ROUNDS_LOG_ENV] = str(rounds_log)
    link_env = env
    env[PARTS_OFF_ENV] = ",".join(options.flower_off)
    if options.accelerated_server:
        if "doorbells" not in options.flower_off:
            env[DOORBELLS] = f"fedsqueeze/{group.launch_id}"
        shim_commands(env, work / "bin", {"flwr-serverapp": SERVERAPP_ENTRY})
        if "task-poll" not in options.flower_off:
            env["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] = TUNED_SUPEREXEC_POLL
            link_env = {**env, "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": LINK_SUPEREXEC_POLL}
    meters: list[WireMeter] = []
    status: dict = {}
    run_id = 0
    link = None
    faults: FaultInjector | None = None
    failure: BaseException | None = None
    try:
        with sigterm_as_interrupt():
            tls = make_certificates(work / "tls") if options.tls else None
            link = start_superlink(group, link_env, simulation=False, tls=tls,
                                   extra=("--enable-supernode-auth",) if options.auth else (),
                                   rings=options.accelerated_server)
            security = tls.supernode_args() if tls else ["--insecure"]
            keys = _node_keys(group, env, link, options, work)
            nodes = []
            for index in range(options.clients + options.unregistered):
                # resolution 0: every forwarded chunk keeps its own timestamp, so no chunk of a
                # round can be merged into an idle-poll bucket just before the round's window.
                meter = WireMeter(("127.0.0.1", link.fleet_port), name=f"supernode-{index}",
                                  resolution=0.0)
                meters.append(meter)
                nodes.append(_start_supernode(group, env, index, options, meter.start(),
                                              security + keys[index]))
            del nodes[options.clients:]  # unregistered ones: refused, never waited for
            if options.executor == "warm":
                _start_warm_worker(group, env, nodes, options, work / "slots")
            wait_until(lambda: all(_registered(n) for n in nodes), timeout=120,
                       what="every SuperNode to register with the SuperLink")
            if options.kills:
                faults = _fault_injector(group, env, nodes, options,
                                         lambda p: security + keys[p], work, results_dir)
                faults.start()
            try:
                run_id, status = run_app(group, env, link, app_dir, run_config, logs,
                                         options.echo)
            except RuntimeError as err:  # flwr cannot reach a SuperLink that died
                if link.started.process.poll() is None:
                    raise
                status = {"status": "finished:server-lost",
                          "status-details": f"the SuperLink exited with code "
                                            f"{link.started.process.poll()}: {err}"}
    except BaseException as err:
        failure = err
        raise
    finally:
        superlink_exit = None if link is None else link.started.process.poll()
        if faults is not None:
            faults.stop()
        leftover = group.stop_all()
        for meter in meters:
            meter.stop()
        if not leftover:  # a process that would not stop may still use its Flower home
            shutil.rmtree(work, ignore_errors=True)
        settle_status(results_dir, status, failure, superlink_exit)
        if not ours:  # any other app: rows by round from its messages' group ids
            logged = read_rows(rounds_log) if rounds_log.is_file() else []
            write_any_app_results(results_dir, app_dir, run_config, meters[:options.clients],
                                  logged, status, failure)
        record_deployment(results_dir, options, faults)
        if ours and (results_dir / "rounds.jsonl").exists():  # wire bytes into its rows
            wire = add_wire_bytes(results_dir, meters[:options.clients], status, since=launched)
        else:  # per SuperNode, whatever the app wrote
            wire = {"by_node": wire_by_node(meters[:options.clients], status)}
            (results_dir / WIRE_FILE).write_text(json.dumps(
                {"flower_status": status, **wire["by_node"]}, indent=1))
    return LaunchResult(run_id, status, results_dir, leftover, logs, group.launch_id, wire)
