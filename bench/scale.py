"""How far one 2-core box goes: many SuperNodes in a deployment, many virtual clients in a
simulation; memory of every process the launch started, and seconds per round.

    python bench/scale.py --engine deployment --clients 50 [--fraction 0.2] [--rounds 5]
    python bench/scale.py --engine simulation --clients 1000 --fraction 0.1 [--method resfed]

While the run goes, a sampler sums, once a second, the PSS (proportional set size: shared
pages split among the processes sharing them) and the RSS of every process whose environment
carries a launch id (the launcher tags all it starts, and their descendants inherit it);
the peak is printed, with the median seconds per round of rounds 2..N.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil
from periodic import Periodic  # bench/, the folder of this script

from fedsqueeze.deploy.config_check import find_app_dir
from fedsqueeze.deploy.launch.deployment import DeployOptions, deploy
from fedsqueeze.deploy.launch.processes import processes_of_launch
from fedsqueeze.deploy.launch.simulate import simulate
from fedsqueeze.server.results import read_run

GIB = 1024 ** 3


class MemorySampler(Periodic):
    """Peak total PSS and RSS of the launch's processes, sampled every `interval` s."""

    def __init__(self, interval: float = 1.0) -> None:
        super().__init__(interval)
        self.peak = {"pss": 0, "rss": 0, "processes": 0}

    def sample(self) -> dict[str, int]:
        pss = rss = count = 0
        for proc in processes_of_launch():
            try:
                info = proc.memory_full_info()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            pss += info.pss
            rss += info.rss
            count += 1
        return {"pss": pss, "rss": rss, "processes": count}

    def tick(self) -> None:
        now = self.sample()
        if now["pss"] > self.peak["pss"]:
            self.peak = now


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=("deployment", "simulation"), required=True)
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--fraction", type=float, default=0.2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--method", default="fedavg")
    parser.add_argument("--results-dir", type=Path)
    args = parser.parse_args(argv)
    out = (args.results_dir or Path(tempfile.mkdtemp(prefix="scale-"))).resolve()
    name = f"scale-{args.engine}-{args.method}-{args.clients}"
    run_config = {"results-dir": str(out), "run-name": name, "engine": args.engine,
                  "method": args.method, "partitioner": "iid",
                  "num-server-rounds": args.rounds, "fraction-train": args.fraction,
                  "round-timeout": 1800.0}
    sampler = MemorySampler()
    sampler.start()
    started = time.monotonic()
    if args.engine == "deployment":
        result = deploy(find_app_dir(), run_config, out / name,
                        DeployOptions(clients=args.clients, echo=False))
    else:
        result = simulate(find_app_dir(), run_config, out / name, clients=args.clients,
                          cpus_per_client=1, gpus_per_client=0.0, echo=False)
    wall = time.monotonic() - started
    sampler.stop()
    peak = sampler.peak
    if not result.succeeded:
        print(f"{name} failed: {result.status}", file=sys.stderr)
        return 1
    _, rounds, _ = read_run(out / name)
    later = [r["seconds"] for r in rounds[1:]] or [r["seconds"] for r in rounds]
    per_node = f", {peak['pss'] / args.clients / 2**20:.0f} MiB PSS per SuperNode" \
        if args.engine == "deployment" else ""
    median = statistics.median(later)
    print(f"{name}: {len(rounds)} rounds completed, {len(rounds[-1]['clients'])} clients per "
          f"round, final accuracy {rounds[-1]['accuracy']:.4f}; median {median:.1f}"
          f" s per round (rounds 2-{len(rounds)}), {wall:.0f} s wall; peak memory of the launch's "
          f"{peak['processes']} processes: PSS {peak['pss'] / GIB:.2f} GiB, RSS "
          f"{peak['rss'] / GIB:.2f} GiB{per_node}; results in {out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
