"""Run inside the SuperLink's network namespace by test_netns.py: a SuperLink with TLS and
SuperNode authentication on the namespace's veth addresses, two registered SuperNodes in two
other namespaces and one unregistered, then the app; prints Flower's status as JSON.

    python netns_driver.py WORK_DIR RESULTS_DIR NS_A ADDR_A NS_B ADDR_B
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from fedsqueeze.deploy.auth import make_node_key, register
from fedsqueeze.deploy.config_check import find_app_dir
from fedsqueeze.deploy.flower import flower_command, flower_env, start_superlink, write_connection
from fedsqueeze.deploy.launch import run_app
from fedsqueeze.deploy.processes import ProcessGroup, wait_until
from fedsqueeze.deploy.tls import make_certificates


def main(work: Path, results: Path, ns_a: str, addr_a: str, ns_b: str, addr_b: str) -> None:
    logs = results / "logs"
    env = flower_env(work / "flwr-home")
    group = ProcessGroup(logs)
    try:
        # the SuperNodes reach the veth addresses; the flwr CLI the control API on loopback
        tls = make_certificates(work / "tls", hosts=(addr_a, addr_b, "127.0.0.1"))
        link = start_superlink(group, env, simulation=False, tls=tls,
                               extra=("--enable-supernode-auth",), fleet_host="0.0.0.0")
        write_connection(Path(env["FLWR_HOME"]), link)
        keys = [make_node_key(work / "keys", f"node-{i}") for i in range(3)]
        for key in keys[:2]:
            register(group, env, key)
        placement = [(ns_a, addr_a), (ns_b, addr_b), (ns_b, addr_b)]  # the third: unregistered
        started = []
        for i, ((ns, addr), key) in enumerate(zip(placement, keys)):
            started.append(group.start(f"supernode-{i}", [
                "ip", "netns", "exec", ns, flower_command("flower-supernode"),
                *tls.supernode_args(), *key.supernode_args(), "--grpc-rere",
                "--superlink", f"{addr}:{link.fleet_port}", "--port", str(9094 + i),
                "--node-config", f"partition-id={i % 2} num-partitions=2"], env))
        wait_until(lambda: all("SuperNode ID" in s.log_path.read_text() for s in started[:2]),
                   timeout=120, what="the registered SuperNodes")
        run_config = {"results-dir": str(results.parent), "run-name": results.name,
                      "engine": "deployment", "partitioner": "iid", "num-server-rounds": 1,
                      "min-nodes": 2, "round-timeout": 180.0}
        _, status = run_app(group, env, link, find_app_dir(), run_config, logs, echo=False)
        print(json.dumps(status))
    finally:
        group.stop_all()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), *sys.argv[3:7])
