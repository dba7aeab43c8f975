"""`fedsqueeze deploy`: one SuperLink and N SuperNodes as real processes talking gRPC, on one
host: the server half (server_host.py: SuperLink, a wire meter per partition, the app's
submission, wire bytes into the results) and the client half (nodes.py: SuperNodes, the warm
worker, GPU pinning) that `fedsqueeze server` and `fedsqueeze client` run on separate
hosts, here on 127.0.0.1 with free ports, plus what only a single host can do: fault
injection (kill and restart SuperNodes), mixed stock/accelerated deployments, unregistered
SuperNodes for tests. Every process started, and all their descendants, are stopped on
success, failure and Ctrl-C.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..accelerated.flower_internals import parts_off
from ..wire.wire_meter import WireMeter
from .auth import make_node_key, register
from .faults import FaultInjector, Kill
from .flower import SuperLink, require_grpc_flower, start_superlink, write_connection
from .lifecycle import LaunchResult, launching, run_app, write_deployment
from .nodes import FLOWERS, NodeHost, SuperNode, registered, start_supernode, start_warm_worker
from .processes import ProcessGroup, wait_until
from .server_host import WIRE_FILE, open_meters, server_env, stop_meters, write_wire_results
from .tls import make_certificates

__all__ = ["FLOWERS", "WIRE_FILE", "DeployOptions", "deploy"]


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
        NodeHost(self.clients, executor=self.executor)  # the executor's name checked
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

    @property
    def node_host(self) -> NodeHost:
        return NodeHost(self.clients, self.gpus, self.executor, self.accelerated_nodes)

    def describe(self) -> dict[str, object]:
        """What config.json records about how the deployment ran."""
        return {"executor": self.executor, "flower": self.flower,
                "supernode_flower": self.supernode_flower, "flower_off": list(self.flower_off),
                "auth": self.auth,
                **({"kills": [f"{k.round}:{','.join(map(str, k.partitions))}"
                              for k in self.kills],
                    "restart_after": self.restart_after} if self.kills else {})}


def record_deployment(results_dir: Path, options: DeployOptions,
                      faults: FaultInjector | None = None) -> None:
    """config.json says which executor and which waits ran (and what faults were injected)."""
    write_deployment(results_dir, {
        **options.describe(), "supernodes": options.clients, "tls": options.tls,
        "gpus": list(options.gpus),
        **({"fault_events": faults.events, "fault_errors": faults.errors} if faults else {})})


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
        register(group, env, key.public)
    return [key.supernode_args() for key in keys]


def _fault_injector(group: ProcessGroup, env: dict[str, str], nodes: list[SuperNode],
                    options: DeployOptions, security_of: Callable[[int], list[str]],
                    work: Path, results_dir: Path) -> FaultInjector:
    restarts = {"n": 0}

    def restart(partition: int) -> None:
        node = start_supernode(group, env, options.node_host, partition, partition,
                               nodes[partition].superlink, security_of(partition))
        if options.executor == "warm":
            restarts["n"] += 1
            start_warm_worker(group, env, options.node_host, [node], work / "slots",
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
    with launching(results_dir) as launch:
        group, work = launch.group, launch.work
        meters: list[WireMeter] = []
        faults: FaultInjector | None = None

        def stop_faults() -> None:
            if faults is not None:
                faults.stop()

        def close_results() -> None:
            launch.wire = write_wire_results(results_dir, app_dir, run_config,
                                             meters[:options.clients], launch.status,
                                             launch.failure, launched)
            record_deployment(results_dir, options, faults)

        launch.before_stop.append(stop_faults)
        launch.after_stop.append(lambda: stop_meters(meters))
        launch.after_settle.append(close_results)
        env = server_env(group, work, results_dir, app_dir, options.accelerated_server,
                         options.flower_off)
        tls = make_certificates(work / "tls") if options.tls else None
        link = launch.link = start_superlink(
            group, env, simulation=False, tls=tls,
            extra=("--enable-supernode-auth",) if options.auth else (),
            rings=options.accelerated_server)
        security = tls.supernode_args() if tls else ["--insecure"]
        keys = _node_keys(group, env, link, options, work)
        meters += open_meters(link, options.clients + options.unregistered)
        nodes = [start_supernode(group, env, options.node_host, p, p,
                                 f"127.0.0.1:{meter.port}", security + keys[p])
                 for p, meter in enumerate(meters)]
        del nodes[options.clients:]  # unregistered ones: refused, never waited for
        if options.executor == "warm":
            start_warm_worker(group, env, options.node_host, nodes, work / "slots")
        wait_until(lambda: all(registered(n) for n in nodes), timeout=120,
                   what="every SuperNode to register with the SuperLink")
        if options.kills:
            faults = _fault_injector(group, env, nodes, options,
                                     lambda p: security + keys[p], work, results_dir)
            faults.start()
        try:
            launch.run_id, launch.status = run_app(group, env, link, app_dir, run_config,
                                                   launch.logs, options.echo)
        except RuntimeError as err:  # flwr cannot reach a SuperLink that died
            if link.started.process.poll() is None:
                raise
            launch.status = {"status": "finished:server-lost",
                             "status-details": f"the SuperLink exited with code "
                                               f"{link.started.process.poll()}: {err}"}
    return launch.result()
