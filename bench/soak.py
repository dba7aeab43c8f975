"""Soak: a long deployment with churn, to show nothing leaks and nothing is lost.

    python bench/soak.py [--rounds 200] [--clients 10] [--kill-every 20] [--seed 0]

FedAvg, fc2, `--clients` SuperNodes; every `--kill-every` rounds a SuperNode drawn at random
(seeded) is SIGKILLed mid-round and restarted 3 s later. While it runs, the RSS of the
ServerApp and of the SuperLink is sampled after each round. Prints: whether the run
completed, whether every round has its row, the failed replies per kill, and the RSS of both
at round `--kill-every` and at the last round (ratio; the target is within 20%).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
from periodic import Periodic  # bench/, the folder of this script

from fedsqueeze.deploy.config_check import find_app_dir
from fedsqueeze.deploy.launch.deployment import DeployOptions, deploy
from fedsqueeze.deploy.launch.faults import Kill
from fedsqueeze.deploy.launch.flower import PROCESS_NAMES
from fedsqueeze.server.results import read_run

WATCHED = {name: PROCESS_NAMES[name] for name in ("serverapp", "superlink")}


class RssByRound(Periodic):
    """RSS of the ServerApp and the SuperLink (our descendants) each time a round is written."""

    def __init__(self, rounds_path: Path) -> None:
        super().__init__(0.5)
        self.rounds_path = rounds_path
        self.by_round: dict[int, dict[str, int]] = {}
        self._seen = 0

    def _rss(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for proc in psutil.Process().children(recursive=True):
            try:
                cmd = " ".join(proc.cmdline())
                for name, needles in WATCHED.items():
                    if any(n in cmd for n in needles) and "ip netns" not in cmd:
                        found[name] = max(found.get(name, 0), proc.memory_info().rss)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                pass
        return found

    def tick(self) -> None:
        try:
            done = len(self.rounds_path.read_text().splitlines())
        except OSError:
            return
        if done > self._seen:
            self._seen = done
            self.by_round[done] = self._rss()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--kill-every", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results-dir", type=Path)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    kills = tuple(Kill(r, (int(rng.integers(args.clients)),))
                  for r in range(args.kill_every, args.rounds, args.kill_every))
    out = (args.results_dir or Path(tempfile.mkdtemp(prefix="soak-"))).resolve()
    run_dir = out / "soak"
    sampler = RssByRound(run_dir / "rounds.jsonl")
    sampler.start()
    started = time.monotonic()
    result = deploy(find_app_dir(), {
        "results-dir": str(out), "run-name": "soak", "engine": "deployment",
        "partitioner": "iid", "num-server-rounds": args.rounds, "min-nodes": 2,
        "round-timeout": 300.0, "eval-every": 10},
        run_dir, DeployOptions(clients=args.clients, echo=False, kills=kills, restart_after=3.0))
    seconds = time.monotonic() - started
    sampler.stop()

    config, rows, summary = read_run(run_dir)
    present = [r["round"] for r in rows]
    report = {
        "completed": result.succeeded, "status": summary.get("status"),
        "every_round_present": present == list(range(1, args.rounds + 1)),
        "rounds": len(rows), "seconds": round(seconds, 1),
        "kills": [f"{k.round}:{k.partitions[0]}" for k in kills],
        "fault_events": len(config.get("deployment", {}).get("fault_events", [])),
        "failed_replies": summary.get("failed_replies"),
        "rejoined_rounds": [r["round"] for r in rows if r.get("rejoined")],
        "final_accuracy": summary.get("final_accuracy"),
        "leftover_processes": result.leftover_pids,
    }
    first, last = args.kill_every, max(sampler.by_round, default=0)
    for name in WATCHED:
        early = sampler.by_round.get(first, {}).get(name)
        late = sampler.by_round.get(last, {}).get(name)
        report[f"{name}_rss_mib"] = {f"round_{first}": early and round(early / 2**20, 1),
                                     f"round_{last}": late and round(late / 2**20, 1),
                                     "ratio": round(late / early, 3) if early and late else None}
    print(json.dumps(report, indent=2))
    print(f"results: {run_dir}")
    ok = report["completed"] and report["every_round_present"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
