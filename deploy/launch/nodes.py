"""Starting the SuperNodes of one host: `fedsqueeze client` on a client host, and the client
half of `fedsqueeze deploy` on a single host.

Each SuperNode gets `partition-id=p num-partitions=N` as node config, its own SuperLink
address (on a single host: its wire meter; across hosts: the server's metering front, port
`base + p`), with `gpus` `CUDA_VISIBLE_DEVICES` round-robin over the host's GPUs, and, with the
warm executor, one warm worker that serves every SuperNode of the host.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from .flower import SUPERNODE_ENTRY, WARM_WORKER_ENTRY, flower_command, free_port
from .processes import ProcessGroup, Started

EXECUTORS = ("warm", "stock")
FLOWERS = ("accelerated", "stock")  # deploy/accelerated/'s layer, or Flower as it is


def poll_cap(supernodes: int) -> float:
    """The longest idle poll: 0.25 s, longer with many nodes, so that polling stays a small
    share of a 2-core box's CPU (each poll is a gRPC and an HTTP call in Python)."""
    return max(0.25, 0.025 * supernodes)


@dataclass(frozen=True)
class NodeHost:
    """How one host runs its SuperNodes."""
    num_partitions: int          # N of the whole federation (node config num-partitions)
    gpus: tuple[str, ...] = ()   # this host's GPU ids, round-robin over its SuperNodes
    executor: str = "warm"       # warm: one forking worker; stock: a process per message
    accelerated: bool = True     # the accelerated Flower layer, or Flower's own SuperNode
    max_wait: float | None = None  # a SuperNode gives up after this long without its SuperLink

    def __post_init__(self) -> None:
        if self.executor not in EXECUTORS:
            raise ValueError(f"--executor {self.executor!r}: one of {', '.join(EXECUTORS)}")


@dataclass
class SuperNode:
    started: Started
    partition: int
    runtime_address: str   # its ClientApp (runtime) API
    gpus: str | None
    superlink: str         # the Fleet address it connects to (a wire meter)


def start_supernode(group: ProcessGroup, env: dict[str, str], host: NodeHost, partition: int,
                    slot: int, superlink: str, security: list[str], name: str = ""
                    ) -> SuperNode:
    """SuperNode of `partition`, the `slot`-th of this host (its GPU: slot round-robin);
    `name`: its process's (and log's) name, `supernode-<partition>` by default."""
    node_env = dict(env)
    gpus = host.gpus[slot % len(host.gpus)] if host.gpus else None
    if gpus is not None:
        node_env["CUDA_VISIBLE_DEVICES"] = gpus
    runtime_port = free_port()
    flower_args = [*security, "--grpc-rere", "--superlink", superlink,
                   "--host", "127.0.0.1", "--port", str(runtime_port),
                   "--node-config", f"partition-id={partition} "
                   f"num-partitions={host.num_partitions}"]
    if host.max_wait is not None:
        flower_args += ["--max-wait-time", str(host.max_wait)]
    if host.executor == "warm":
        flower_args += ["--isolation", "process"]  # our worker serves its ClientApp API
    if host.accelerated:
        bell = (["--executor-bell", f"127.0.0.1:{runtime_port}"]
                if host.executor == "warm" else [])
        command = [sys.executable, "-m", SUPERNODE_ENTRY,
                   "--poll-cap", str(poll_cap(host.num_partitions)), *bell, "--", *flower_args]
    else:
        command = [flower_command("flower-supernode"), *flower_args]
    started = group.start(name or f"supernode-{partition}", command, node_env)
    return SuperNode(started, partition, f"127.0.0.1:{runtime_port}", gpus, superlink)


def start_warm_worker(group: ProcessGroup, env: dict[str, str], host: NodeHost,
                      nodes: list[SuperNode], slot_dir: Path, name: str = "warm-worker"
                      ) -> Started:
    """One worker for every SuperNode of this host (they share its imported pages); the
    workers of one launch share the --max-running and --max-reading slots."""
    command = [sys.executable, "-m", WARM_WORKER_ENTRY, "--insecure",
               "--poll-cap", str(poll_cap(host.num_partitions)), "--slot-dir", str(slot_dir)]
    if not host.accelerated:
        command.append("--stock-latency")
    for node in nodes:
        serve = f"{node.runtime_address},parent={node.started.process.pid}"
        command += ["--serve", serve + (f",gpus={node.gpus}" if node.gpus is not None else "")]
    return group.start(name, command, env)


NODE_ID_LOGGED = "SuperNode ID"  # Flower logs it once the SuperLink accepted the SuperNode


def has_node_id(node: SuperNode) -> bool:
    """The SuperNode reached the SuperLink and was accepted (Flower logs its node id)."""
    return NODE_ID_LOGGED in node.started.log_path.read_text(errors="replace")


def registered(node: SuperNode) -> bool:
    """`has_node_id`, or an error with its log's tail if it exited."""
    started = node.started
    if started.process.poll() is not None:
        raise RuntimeError(f"{started.name} exited with code {started.process.poll()}:\n"
                           + started.log_tail())
    return has_node_id(node)
