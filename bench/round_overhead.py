"""Round overhead: round time minus the slowest client's local training.

    python bench/round_overhead.py RUN_DIR [RUN_DIR ...]        # runs that exist
    python bench/round_overhead.py --compare [--clients 10] [--rounds 5] [--results-dir DIR]
                                   [--reuse]

Each round's `seconds` (ServerApp, from the first message to the evaluated model) minus the
largest `fit_seconds` a client of that round reported (its local SGD alone) is what the
framework costs: messaging, polling, process start-up, data loading, decoding, aggregation,
evaluation. Round 1 is shown apart (first imports and data caches); the figure compared is
the median over rounds 2..N.

`--compare` runs the same fc2 deployment (FedAvg, IID, `client-threads=1`) twice, one after the
other in this invocation: Flower's stock ClientApp executor with Flower's own waits
(`--flower stock`), then the warm worker with short waits (the default),
and prints both and their ratio. Run it on an otherwise idle machine.

While each compared run goes, a sampler reads the CPU time (user + system, with the reaped
children's) of the launcher (its relays meter the wire) and of every process it started,
twice a second; it prints the CPU-seconds per round each kind of process
spent in rounds 2..N (also written to the run's `cpu.json`). On a box with C cores a round
cannot be shorter than its CPU-seconds / C.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import psutil
from periodic import Periodic  # bench/, the folder of this script

from fedsqueeze.deploy.config_check import find_app_dir
from fedsqueeze.deploy.launch.deployment import DeployOptions, deploy
from fedsqueeze.deploy.launch.flower import PROCESS_NAMES
from fedsqueeze.server.results import read_run


def overheads(run_dir: Path) -> list[tuple[int, float, float]]:
    """(round, seconds, overhead seconds) per round."""
    _, rounds, _ = read_run(run_dir)
    rows = []
    for r in rounds:
        fits = [c["fit_seconds"] for c in r["per_client"].values() if "fit_seconds" in c]
        rows.append((r["round"], r["seconds"], r["seconds"] - max(fits, default=0.0)))
    return rows


def later_medians(run_dir: Path) -> tuple[float, float, float] | None:
    """(round 1 s, median s of rounds 2..N, median overhead s of rounds 2..N)."""
    rows = overheads(run_dir)
    if not rows:
        return None
    later = rows[1:] or rows
    return (rows[0][1], statistics.median(r[1] for r in later),
            statistics.median(r[2] for r in later))


def print_table(paths: list[Path]) -> dict[Path, tuple[float, float, float] | None]:
    print(f"{'run':40} {'round 1 s':>10} {'later rounds s':>15} {'overhead s':>11}")
    found = {}
    for path in paths:
        found[path] = figures = later_medians(path)
        if figures is None:
            print(f"{path.name:40} (no finished round)")
            continue
        print(f"{path.name:40} {figures[0]:10.2f} {figures[1]:15.2f} {figures[2]:11.2f}")
    return found


ROLES = (("SuperExecs and ClientApps", PROCESS_NAMES["clientapp"]),
         ("SuperNodes", PROCESS_NAMES["supernode"]),
         ("SuperLink", PROCESS_NAMES["superlink"]),
         ("ServerApp", PROCESS_NAMES["serverapp"]))


def role_of(proc: psutil.Process) -> str:
    if proc.pid == os.getpid():
        return "launcher (relays)"
    command = " ".join(proc.cmdline())
    return next((role for role, names in ROLES if any(n in command for n in names)), "other")


class CpuSampler(Periodic):
    """CPU-seconds so far (own and reaped children's) of this launcher and each descendant,
    zombies included, twice a second. A process's time is then always in exactly one place:
    its own until it is reaped, its parent's reaped-children time after, so the change of the
    sum over a window is the CPU the launch spent in it. Roles are chosen so that a child
    belongs to its parent's (ClientApps to SuperExecs)."""

    def __init__(self, interval: float = 0.5) -> None:
        super().__init__(interval)
        self.samples: list[tuple[float, dict[tuple[int, float], tuple[str, float]]]] = []
        self._roles: dict[tuple[int, float], str] = {}

    def tick(self) -> None:
        me = psutil.Process()
        seen = {}
        for proc in [me, *me.children(recursive=True)]:
            try:
                key = (proc.pid, proc.create_time())
                times = proc.cpu_times()
                role = self._roles.get(key) or self._role(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            self._roles[key] = role
            seen[key] = (role, times.user + times.system + times.children_user
                         + times.children_system)
        self.samples.append((time.time(), seen))

    def _role(self, proc: psutil.Process) -> str:
        try:
            return role_of(proc)
        except psutil.ZombieProcess:  # no command line left: its parent's role
            parent = proc.ppid()
            return next((role for (pid, _), role in self._roles.items() if pid == parent),
                        "other")

    def per_role(self, start: float, end: float) -> dict[str, dict[str, float]]:
        """CPU-seconds by role between the samples nearest `start` and `end`."""
        if not self.samples:
            return {}
        first = min(self.samples, key=lambda s: abs(s[0] - start))[1]
        last = min(self.samples, key=lambda s: abs(s[0] - end))[1]
        cpu, count = Counter(), Counter()
        for role, total in last.values():
            cpu[role] += total
            count[role] += 1
        for role, total in first.values():
            cpu[role] -= total
        return {role: {"cpu_seconds": cpu[role], "processes": count[role]}
                for role, _ in cpu.most_common()}


def cpu_by_role(run_dir: Path, sampler: CpuSampler) -> dict:
    """rounds 2..N's CPU-seconds by role, written to the run's cpu.json."""
    _, rows, _ = read_run(run_dir)
    later = rows[1:] or rows
    table = {"rounds": [r["round"] for r in later],
             "by_role": sampler.per_role(later[0]["started_unix"], later[-1]["ended_unix"])}
    (run_dir / "cpu.json").write_text(json.dumps(table, indent=2) + "\n")
    return table


def print_cpu(name: str, table: dict) -> None:
    rounds = len(table["rounds"]) or 1
    total = sum(r["cpu_seconds"] for r in table["by_role"].values()) / rounds
    cores = os.cpu_count() or 1
    print(f"{name}: CPU-seconds per round (rounds {table['rounds'][0]}-{table['rounds'][-1]}) "
          f"{total:.2f}, at least {total / cores:.2f} s per round on {cores} cores")
    for role, row in table["by_role"].items():
        print(f"  {role:28} {row['processes']:4d} processes {row['cpu_seconds'] / rounds:7.2f}")


def _finished(run_dir: Path, rounds: int) -> bool:
    try:
        _, rows, summary = read_run(run_dir)
    except FileNotFoundError:
        return False
    return summary.get("status") == "completed" and len(rows) == rounds


def compare(clients: int, rounds: int, results_dir: Path, reuse: bool = False) -> int:
    runs = {"stock": DeployOptions(clients=clients, flower="stock", echo=False),
            "warm": DeployOptions(clients=clients, echo=False)}
    paths = []
    for name, options in runs.items():
        run_name = f"overhead-{name}-{clients}"
        run_config = {"results-dir": str(results_dir), "run-name": run_name,
                      "engine": "deployment", "partitioner": "iid",
                      "num-server-rounds": rounds, "client-threads": 1,
                      "round-timeout": 600.0,
                      **({"server-poll-interval": 3.0} if not options.accelerated_server
                         else {})}
        paths_of_run = results_dir / run_name
        if reuse and _finished(paths_of_run, rounds):
            print(f"reusing {name}: {paths_of_run}", flush=True)
            paths.append(paths_of_run)
            continue
        print(f"running {name}: {clients} SuperNodes, {rounds} rounds ...", flush=True)
        sampler = CpuSampler()
        sampler.start()
        try:
            result = deploy(find_app_dir(), run_config, paths_of_run, options)
        finally:
            sampler.stop()
        if not result.succeeded:
            print(f"{name} failed: {result.status}", file=sys.stderr)
            return 1
        cpu_by_role(paths_of_run, sampler)
        paths.append(paths_of_run)
    found = print_table(paths)
    stock, warm = (found[p] for p in paths)
    print(f"stock / warm: round time x{stock[1] / warm[1]:.1f}, "
          f"overhead x{stock[2] / warm[2]:.1f} (medians of rounds 2-{rounds})")
    for name, path in zip(runs, paths):
        if (path / "cpu.json").is_file():
            print_cpu(name, json.loads((path / "cpu.json").read_text()))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", type=Path)
    parser.add_argument("--compare", action="store_true")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--results-dir", type=Path)
    parser.add_argument("--reuse", action="store_true",
                        help="with --compare: keep a finished run of the same name")
    args = parser.parse_args(argv)
    if args.compare:
        out = args.results_dir or Path(tempfile.mkdtemp(prefix="round-overhead-"))
        return compare(args.clients, args.rounds, out.resolve(), args.reuse)
    if not args.runs:
        parser.error("give RUN_DIRs or --compare")
    print_table(args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
