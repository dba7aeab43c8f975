"""Do the engines compute the same numbers? Each method in simulation, in a deployment on
Flower's stock executor and in a deployment on the warm worker; prints the accuracy per
round and the largest difference.

    python bench/engines_agree.py [--methods fedavg fedsparsify resfed] [--rounds 3]
                                  [--clients 3] [--results-dir DIR]

Same seeds, `client-threads=1` (torch's thread count fixed in both engines), IID split.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from fedsqueeze.deploy.config_check import find_app_dir
from fedsqueeze.deploy.launch.deployment import DeployOptions, deploy
from fedsqueeze.deploy.launch.simulate import simulate
from fedsqueeze.server.results import read_run

ENGINES = ("simulation", "stock", "warm")


def run(engine: str, method: str, rounds: int, clients: int, out: Path) -> list[float]:
    name = f"{method}-{engine}"
    config = {"results-dir": str(out), "run-name": name, "method": method,
              "partitioner": "iid", "num-server-rounds": rounds, "client-threads": 1,
              "engine": "simulation" if engine == "simulation" else "deployment",
              "round-timeout": 600.0}
    if engine == "simulation":
        result = simulate(find_app_dir(), config, out / name, clients=clients,
                          cpus_per_client=1, gpus_per_client=0.0, echo=False)
    else:
        options = DeployOptions(clients=clients, executor=engine, echo=False)
        result = deploy(find_app_dir(), config, out / name, options)
    if not result.succeeded:
        raise RuntimeError(f"{name} failed: {result.status}")
    return [r["accuracy"] for r in read_run(out / name)[1]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=["fedavg", "fedsparsify", "resfed"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--results-dir", type=Path)
    args = parser.parse_args(argv)
    out = (args.results_dir or Path(tempfile.mkdtemp(prefix="engines-"))).resolve()
    worst = 0.0
    print(f"{'method':12} {'engine':11} accuracy per round")
    for method in args.methods:
        curves = {e: run(e, method, args.rounds, args.clients, out) for e in ENGINES}
        for engine, curve in curves.items():
            print(f"{method:12} {engine:11} " + ", ".join(f"{a:.4f}" for a in curve),
                  flush=True)
        delta = max(abs(a - b) for e in ENGINES[1:]
                    for a, b in zip(curves["simulation"], curves[e], strict=True))
        worst = max(worst, delta)
        print(f"{method:12} max |delta| vs simulation = {delta}")
    print(f"largest difference over all methods and rounds: {worst}")
    return 0 if worst == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
