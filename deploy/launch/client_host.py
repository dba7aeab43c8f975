"""`fedsqueeze client`: the SuperNodes of one client host, for a `fedsqueeze server` elsewhere.

Partition p's SuperNode connects to the server's metering front at `HOST:PORT + p` (the server
attributes its bytes by that port). With authentication, each SuperNode signs with its own key
pair `KEYS/supernode-<p>` (made here once, kept for later runs); the server registers the
public halves before the SuperNodes start (`--keys-only` makes and prints them, nothing
else). The SuperNodes run until the server's SuperLink has been gone for `--max-wait`
seconds (the run ended), until one of them fails, or until Ctrl-C.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .auth import NodeKey, node_key
from .flower import flower_env
from .nodes import NODE_ID_LOGGED, NodeHost, SuperNode, start_supernode, start_warm_worker
from .processes import ProcessGroup, sigterm_as_interrupt


@dataclass(frozen=True)
class ClientOptions:
    server: str                        # HOST:PORT of the server's metering front (base port)
    partitions: tuple[int, ...]        # this host's partitions
    host: NodeHost                     # num_partitions, GPUs, executor, Flower layer, max_wait
    root_certificates: Path | None = None  # the server's CA; None: cleartext (--insecure)
    keys_dir: Path | None = None       # SuperNode key pairs (authentication); None: none

    def __post_init__(self) -> None:
        host, _, port = self.server.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"--server {self.server!r}: HOST:PORT of `fedsqueeze server`")
        if not self.partitions:
            raise ValueError("--partitions: at least one partition id")
        bad = [p for p in self.partitions if not 0 <= p < self.host.num_partitions]
        if bad or len(set(self.partitions)) != len(self.partitions):
            raise ValueError(f"--partitions {','.join(map(str, self.partitions))}: distinct ids "
                             f"in 0..{self.host.num_partitions - 1} (--clients "
                             f"{self.host.num_partitions})")
        if self.root_certificates is not None and not self.root_certificates.is_file():
            raise FileNotFoundError(f"--root-certificates {self.root_certificates}: no such file "
                                    "(copy the server's ca.crt here)")

    def address_of(self, partition: int) -> str:
        host, _, port = self.server.rpartition(":")
        return f"{host}:{int(port) + partition}"

    def keys(self) -> dict[int, tuple[NodeKey, bool]]:
        """Each partition's key pair (made now if missing: True); none without keys_dir."""
        if self.keys_dir is None:
            return {}
        return {p: node_key(self.keys_dir, f"supernode-{p}") for p in self.partitions}


REFUSED = "Failed to activate SuperNode"  # Flower's error when the SuperLink refuses a node
RETRY_AFTER = 5.0  # seconds between tries of a refused SuperNode
REFUSED_FOR = 60.0  # ... for at least this long (its old self's heartbeat expires in ~20 s)


def run_clients(options: ClientOptions, logs: Path, say: Callable[[str], None] = print) -> int:
    """Start this host's SuperNodes (and warm worker) and wait until they end; 0 when every
    SuperNode connected and ended because its SuperLink went away, else 1.

    A SuperNode the SuperLink refuses is started again every few seconds for up to
    `max_wait`: after a crash of this host, the key's previous SuperNode counts as online
    until its heartbeat expires (about 20 s), and Flower's SuperNode exits when refused."""
    group = ProcessGroup(logs)
    env = flower_env(logs / "flwr-home")
    security = (["--root-certificates", str(options.root_certificates)]
                if options.root_certificates else ["--insecure"])
    keys = options.keys()
    for key, made in keys.values():
        if made:
            say(f"made {key.public}: register it on the server (--node-keys) before this "
                "SuperNode starts, or the SuperLink refuses it")
    tries = itertools.count(1)

    def start(slot: int, partition: int, again: bool) -> SuperNode:
        auth = keys[partition][0].supernode_args() if partition in keys else []
        attempt = f"-try{next(tries)}" if again else ""
        node = start_supernode(group, env, options.host, partition, slot,
                               options.address_of(partition), security + auth,
                               f"supernode-{partition}{attempt}")
        if again and options.host.executor == "warm":
            start_warm_worker(group, env, options.host, [node], logs / "slots",
                              name=f"warm-worker{attempt}")
        return node

    try:
        with sigterm_as_interrupt():
            nodes = [start(slot, p, again=False) for slot, p in enumerate(options.partitions)]
            if options.host.executor == "warm":
                start_warm_worker(group, env, options.host, nodes, logs / "slots")
            say(f"{len(nodes)} SuperNodes (partitions "
                f"{', '.join(map(str, options.partitions))}) -> {options.server} + partition; "
                f"logs in {logs}")
            return _follow(nodes, lambda i: start(i, nodes[i].partition, again=True),
                           options.host.max_wait, say)
    except KeyboardInterrupt:
        say("stopped (Ctrl-C or SIGTERM)")
        return 1
    finally:
        group.stop_all()


def _ended(node: SuperNode, log: str) -> bool:
    """Exited, or done: it gave up reaching its SuperLink (Flower 1.39's SuperNode then
    takes another `max_wait` or more to end, and may hang in interpreter shutdown on a
    thread of its own, so it is stopped)."""
    return node.started.process.poll() is not None or "Giving up reconnection" in log


def _follow(nodes: list[SuperNode], restart: Callable[[int], SuperNode],
            max_wait: float | None, say: Callable[[str], None]) -> int:
    """Report each SuperNode's registration and end, start refused ones again (see
    `run_clients`); the result once all have ended."""
    joined: set[int] = set()
    refused_since: dict[int, float] = {}
    told: set[int] = set()
    while True:
        logs = [node.started.log_path.read_text(errors="replace") for node in nodes]
        for node, log in zip(nodes, logs):
            if node.partition not in joined and NODE_ID_LOGGED in log:
                joined.add(node.partition)
                refused_since.pop(node.partition, None)
                say(f"partition {node.partition}: registered with the SuperLink "
                    f"({len(joined)}/{len(nodes)})")
        for i, (node, log) in enumerate(zip(nodes, logs)):
            if node.partition in joined or node.started.process.poll() is None \
                    or REFUSED not in log:
                continue
            first = refused_since.setdefault(node.partition, time.monotonic())
            budget = max(max_wait or 0, REFUSED_FOR)
            if time.monotonic() - first < budget:
                if node.partition not in told:
                    told.add(node.partition)
                    say(f"partition {node.partition}: the SuperLink refused it (its key is "
                        "not registered, or its previous SuperNode is still online until "
                        f"its heartbeat expires); trying again for up to {budget:.0f} s")
                time.sleep(RETRY_AFTER)
                nodes[i], logs[i] = restart(i), ""
        if all(_ended(node, log) for node, log in zip(nodes, logs)):
            break
        time.sleep(0.5)
    failed = [n for n in nodes if n.partition not in joined]
    for node in failed:
        say(f"partition {node.partition}: never registered; its log ends:\n"
            + node.started.log_tail(15))
    if not failed:
        say("every SuperNode ended: the server went away (the run is over)")
    return 1 if failed else 0
