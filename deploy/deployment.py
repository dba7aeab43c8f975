"""`fedsqueeze deploy`: one SuperLink and N SuperNodes as real processes talking gRPC.

Every SuperNode reaches the SuperLink's Fleet API (gRPC-rere over HTTP/2) through a
byte-counting TCP relay of its own (the wire meter), gets `partition-id=i num-partitions=N` as
node config and, with `--gpus`, `CUDA_VISIBLE_DEVICES` round-robin over the given GPUs. The app
is submitted with `flwr run`; when it ends, the relays' bytes are attributed to rounds and
written into the run's results. Every process started, and all their descendants, are
stopped on success, failure and Ctrl-C.
"""

from __future__ import annotations

import shutil
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
TUNED_SUPEREXEC_POLL = "0.05"


@dataclass(frozen=True)
class DeployOptions:
    clients: int
    gpus: tuple[str, ...] = ()
    tls: bool = False
    tuned_latency: bool = True
    echo: bool = True


def _start_supernode(group: ProcessGroup, env: dict[str, str], index: int,
                     options: DeployOptions, relay_port: int, security: list[str]) -> Started:
    node_env = dict(env)
    if options.gpus:
        node_env["CUDA_VISIBLE_DEVICES"] = options.gpus[index % len(options.gpus)]
    command = [flower_command("flower-supernode"), *security, "--grpc-rere",
               "--superlink", f"127.0.0.1:{relay_port}", "--host", "127.0.0.1",
               "--port", str(free_port()),
               "--node-config", f"partition-id={index} num-partitions={options.clients}"]
    return group.start(f"supernode-{index}", command, node_env)


def _registered(node: Started) -> bool:
    if node.process.poll() is not None:
        raise RuntimeError(f"{node.name} exited with code {node.process.poll()}:\n"
                           + node.log_tail())
    return "SuperNode ID" in node.log_path.read_text(errors="replace")


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
            wait_until(lambda: all(_registered(n) for n in nodes), timeout=120,
                       what="every SuperNode to register with the SuperLink")
            run_id, status = run_app(group, env, link, app_dir, run_config, logs, options.echo)
    finally:
        leftover = group.stop_all()
        for meter in meters:
            meter.stop()
        if not leftover:  # a process that would not stop may still use its Flower home
            shutil.rmtree(work, ignore_errors=True)
    wire = add_wire_bytes(results_dir, meters, status) \
        if (results_dir / "rounds.jsonl").exists() else {}
    return LaunchResult(run_id, status, results_dir, leftover, logs, group.launch_id, wire)
