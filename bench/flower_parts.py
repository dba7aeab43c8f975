"""What each part of the accelerated Flower layer buys: round time with it left out.

    python bench/flower_parts.py [--clients 10] [--rounds 5] [--parts waits,doorbells,...]
                                 [--results-dir DIR] [--reuse]

The same fc2 deployment (FedAvg, IID, `client-threads=1`, the accelerated default) runs
once with every part and once per part with that part left out (`fedsqueeze deploy
--flower-off PART`), one after the other in this invocation; then all stock (`--flower
stock`). Printed per run: the median round time of rounds 2..N (round 1 holds first imports
and caches) and the part's share: (round time without it - round time with all) / round
time without it, the part of a round it saves. Parts whose effect is not on round time
(`heartbeat`: a dead node is noticed sooner; `serverapp-reply-poll`: only a ServerApp that is
not fedsqueeze's) show about 0. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from fedsqueeze.deploy.config_check import find_app_dir
from fedsqueeze.deploy.deployment import DeployOptions, deploy
from fedsqueeze.deploy.flower_internals import PARTS, parts_off
from fedsqueeze.server.results import read_run


def run(name: str, options: DeployOptions, clients: int, rounds: int, results_dir: Path,
        reuse: bool) -> float | None:
    """Median seconds of rounds 2..N of one deployment (None when it did not complete)."""
    run_dir = results_dir / name
    finished = False
    if reuse and (run_dir / "summary.json").is_file():
        _, rows, summary = read_run(run_dir)
        finished = summary.get("status") == "completed" and len(rows) == rounds
    if not finished:
        print(f"running {name} ...", flush=True)
        run_config = {"results-dir": str(results_dir), "run-name": name,
                      "engine": "deployment", "partitioner": "iid", "num-server-rounds": rounds,
                      "client-threads": 1, "round-timeout": 600.0,
                      **({"server-poll-interval": 3.0} if options.flower == "stock" else {})}
        result = deploy(find_app_dir(), run_config, run_dir, options)
        if not result.succeeded:
            print(f"  {name} failed: {result.status}", file=sys.stderr)
            return None
    _, rows, _ = read_run(run_dir)
    return statistics.median(r["seconds"] for r in rows[1:] or rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--parts", default=",".join(PARTS), help="the parts to leave out, "
                        "one run each (default: all)")
    parser.add_argument("--results-dir", type=Path)
    parser.add_argument("--reuse", action="store_true", help="keep finished runs")
    args = parser.parse_args(argv)
    out = (args.results_dir or Path(tempfile.mkdtemp(prefix="flower-parts-"))).resolve()
    every = run("all", DeployOptions(clients=args.clients, echo=False), args.clients,
                args.rounds, out, args.reuse)
    rows = [("all parts (the default)", every)]
    for part in parts_off(args.parts):
        options = DeployOptions(clients=args.clients, echo=False, flower_off=(part,))
        rows.append((f"without {part}", run(f"without-{part}", options, args.clients,
                                              args.rounds, out, args.reuse)))
    rows.append(("stock Flower (--flower stock)", run(
        "stock", DeployOptions(clients=args.clients, flower="stock", echo=False),
        args.clients, args.rounds, out, args.reuse)))
    print(f"\n{args.clients} SuperNodes, fc2 FedAvg, median of rounds 2-{args.rounds} ({out})")
    print("| run | s / round | share of the round the part saves |\n|---|---:|---:|")
    for name, seconds in rows:
        share = "-" if seconds is None or every is None or name.startswith(("all", "stock")) \
            else f"{(seconds - every) / seconds:+.0%}"
        print(f"| {name} | {'failed' if seconds is None else f'{seconds:.2f}'} | {share} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
