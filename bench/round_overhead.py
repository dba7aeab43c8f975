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
(`--executor stock --stock-latency`), then the warm worker with short waits (the default),
and prints both and their ratio. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from fedsqueeze.deploy.config_check import find_app_dir
from fedsqueeze.deploy.deployment import DeployOptions, deploy
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


def _finished(run_dir: Path, rounds: int) -> bool:
    try:
        _, rows, summary = read_run(run_dir)
    except FileNotFoundError:
        return False
    return summary.get("status") == "completed" and len(rows) == rounds


def compare(clients: int, rounds: int, results_dir: Path, reuse: bool = False) -> int:
    runs = {"stock": DeployOptions(clients=clients, executor="stock", tuned_latency=False,
                                   echo=False),
            "warm": DeployOptions(clients=clients, echo=False)}
    paths = []
    for name, options in runs.items():
        run_name = f"overhead-{name}-{clients}"
        run_config = {"results-dir": str(results_dir), "run-name": run_name,
                      "engine": "deployment", "partitioner": "iid",
                      "num-server-rounds": rounds, "client-threads": 1,
                      "round-timeout": 600.0,
                      **({"server-poll-interval": 3.0} if not options.tuned_latency else {})}
        paths_of_run = results_dir / run_name
        if reuse and _finished(paths_of_run, rounds):
            print(f"reusing {name}: {paths_of_run}", flush=True)
            paths.append(paths_of_run)
            continue
        print(f"running {name}: {clients} SuperNodes, {rounds} rounds ...", flush=True)
        result = deploy(find_app_dir(), run_config, results_dir / run_name, options)
        if not result.succeeded:
            print(f"{name} failed: {result.status}", file=sys.stderr)
            return 1
        paths.append(results_dir / run_name)
    found = print_table(paths)
    stock, warm = (found[p] for p in paths)
    print(f"stock / warm: round time x{stock[1] / warm[1]:.1f}, "
          f"overhead x{stock[2] / warm[2]:.1f} (medians of rounds 2-{rounds})")
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
