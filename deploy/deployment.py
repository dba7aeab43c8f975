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
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .flower import flower_command, flower_env, free_port, start_superlink
from .launch import LaunchResult, run_app
from .processes import ProcessGroup, Started, sigterm_as_interrupt, wait_until
from .tls import make_certificates
from .wire_meter import WireMeter
from .wire_results import add_wire_bytes

# Public latency knob of Flower 1.39: how often a SuperExec polls for new tasks (default 1 s).
# Stock executor: a fixed 0.05 s; warm worker: 0.01 s, its own idle back-off doing the rest.
TUNED_SUPEREXEC_POLL = "0.05"
WARM_SUPEREXEC_POLL = "0.01"


def poll_cap(supernodes: int) -> float:
    """The longest idle poll: 0.25 s, longer with many nodes, so that polling stays a small
    share of a 2-core box's CPU (each poll is a gRPC and an HTTP call in Python)."""
    return max(0.25, 0.025 * supernodes)


EXECUTORS = ("warm", "stock")


@dataclass(frozen=True)
class DeployOptions:
    clients: int
    gpus: tuple[str, ...] = ()
    tls: bool = False
    tuned_latency: bool = True   # False: Flower's own waits everywhere (--stock-latency)
    executor: str = "warm"       # warm: one forking worker; stock: a process per message
    echo: bool = True

    def __post_init__(self) -> None:
        if self.executor not in EXECUTORS:
            raise ValueError(f"--executor {self.executor!r}: one of {', '.join(EXECUTORS)}")

    def describe(self) -> dict[str, str]:
        """What config.json records about how the deployment ran."""
        return {"executor": self.executor,
                "latency": "tuned" if self.tuned_latency else "stock"}


@dataclass
class SuperNode:
    started: Started
    runtime_address: str   # its ClientApp (runtime) API
    gpus: str | None


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
    if options.tuned_latency:
        command = [sys.executable, "-m", "fedsqueeze.deploy.supernode_main",
                   "--poll-cap", str(poll_cap(options.clients)), "--", *flower_args]
    else:
        command = [flower_command("flower-supernode"), *flower_args]
    started = group.start(f"supernode-{index}", command, node_env)
    return SuperNode(started, f"127.0.0.1:{runtime_port}", gpus)


def _start_warm_worker(group: ProcessGroup, env: dict[str, str], nodes: list[SuperNode],
                       options: DeployOptions) -> Started:
    """One worker for every SuperNode of this host (they share its imported pages)."""
    command = [sys.executable, "-m", "fedsqueeze.deploy.warm_worker", "--insecure",
               "--poll-cap", str(poll_cap(options.clients))]
    if not options.tuned_latency:
        command.append("--stock-latency")
    for node in nodes:
        serve = f"{node.runtime_address},parent={node.started.process.pid}"
        command += ["--serve", serve + (f",gpus={node.gpus}" if node.gpus is not None else "")]
    worker_env = dict(env)
    if options.tuned_latency:
        worker_env["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] = WARM_SUPEREXEC_POLL
    return group.start("warm-worker", command, worker_env)


def _registered(node: SuperNode) -> bool:
    started = node.started
    if started.process.poll() is not None:
        raise RuntimeError(f"{started.name} exited with code {started.process.poll()}:\n"
                           + started.log_tail())
    return "SuperNode ID" in started.log_path.read_text(errors="replace")


def record_deployment(results_dir: Path, options: DeployOptions) -> None:
    """config.json says which executor and which waits ran."""
    path = results_dir / "config.json"
    if path.is_file():
        config = json.loads(path.read_text())
        config["deployment"] = {**options.describe(), "supernodes": options.clients,
                                "tls": options.tls, "gpus": list(options.gpus)}
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        tmp.replace(path)


def deploy(app_dir: Path, run_config: dict[str, object], results_dir: Path,
           options: DeployOptions) -> LaunchResult:
    """Run one deployment to its end; `run_config` must carry `results-dir` and `run-name`."""
    work = Path(tempfile.mkdtemp(prefix="fedsqueeze-deploy-"))
    logs = results_dir / "logs"
    env = flower_env(work / "flwr-home")
    if options.tuned_latency:
        env["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] = TUNED_SUPEREXEC_POLL
    group = ProcessGroup(logs)
    meters: list[WireMeter] = []
    status: dict = {}
    run_id = 0
    try:
        with sigterm_as_interrupt():
            tls = make_certificates(work / "tls") if options.tls else None
            link = start_superlink(group, env, simulation=False, tls=tls)
            security = tls.supernode_args() if tls else ["--insecure"]
            nodes = []
            for index in range(options.clients):
                # resolution 0: every forwarded chunk keeps its own timestamp, so no chunk of a
                # round can be merged into an idle-poll bucket just before the round's window.
                meter = WireMeter(("127.0.0.1", link.fleet_port), name=f"supernode-{index}",
                                  resolution=0.0)
                meters.append(meter)
                nodes.append(_start_supernode(group, env, index, options, meter.start(), security))
            if options.executor == "warm":
                _start_warm_worker(group, env, nodes, options)
            wait_until(lambda: all(_registered(n) for n in nodes), timeout=120,
                       what="every SuperNode to register with the SuperLink")
            run_id, status = run_app(group, env, link, app_dir, run_config, logs, options.echo)
    finally:
        leftover = group.stop_all()
        for meter in meters:
            meter.stop()
        if not leftover:  # a process that would not stop may still use its Flower home
            shutil.rmtree(work, ignore_errors=True)
    record_deployment(results_dir, options)
    wire = add_wire_bytes(results_dir, meters, status) \
        if (results_dir / "rounds.jsonl").exists() else {}
    return LaunchResult(run_id, status, results_dir, leftover, logs, group.launch_id, wire)
