"""What each part of the accelerated Flower layer buys: round time with it left out.

    python bench/flower_parts.py [--clients 10] [--rounds 5] [--parts waits,doorbells,...]
                                 [--results-dir DIR] [--reuse]
    python bench/flower_parts.py --paired PART,... [--repeats 4] [--clients 10] [--rounds 6]

The same fc2 deployment (FedAvg, IID, `client-threads=1`, the accelerated default) runs
once with every part and once per part with that part left out (`fedsqueeze deploy
--flower-off PART`), one after the other in this invocation; then all stock (`--flower
stock`). Printed per run: the median round time of rounds 2..N (round 1 holds first imports
and caches) and the part's share: (round time without it - round time with all) / round
time without it, the part of a round it saves. Parts whose effect is not on round time
(`heartbeat`: a dead node is noticed sooner; `serverapp-reply-poll`: only a ServerApp that is
not fedsqueeze's) show about 0. Run it on an otherwise idle machine.

`--paired`: the parts whose single runs fall within the run-to-run spread, measured together
against the default in alternating pairs (default, without them, default, ...): per pair the
share, then the median share over the pairs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from fedsqueeze.deploy.accelerated.flower_internals import PARTS, parts_off
from fedsqueeze.deploy.config_check import find_app_dir
from fedsqueeze.deploy.launch.deployment import DeployOptions, deploy
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


def paired(parts: tuple[str, ...], repeats: int, clients: int, rounds: int, out: Path
           ) -> int:
    """Default and default-without-`parts` in alternating pairs; prints each pair's share."""
    shares = []
    print(f"| pair | all parts s / round | without {', '.join(parts)} | share |\n"
          "|---|---:|---:|---:|")
    for i in range(1, repeats + 1):
        every = run(f"all-{i}", DeployOptions(clients=clients, echo=False), clients, rounds,
                    out, False)
        without = run(f"without-{i}", DeployOptions(clients=clients, echo=False,
                                                    flower_off=parts), clients, rounds, out,
                      False)
        if every is None or without is None:
            print(f"| {i} | failed | | |")
            continue
        shares.append((without - every) / without)
        print(f"| {i} | {every:.2f} | {without:.2f} | {shares[-1]:+.0%} |", flush=True)
    if shares:
        print(f"\nmedian share of the round these parts save: {statistics.median(shares):+.1%} "
              f"({clients} SuperNodes, fc2 FedAvg, median of rounds 2-{rounds}, {out})")
    return 0 if shares else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--parts", default=",".join(PARTS), help="the parts to leave out, "
                        "one run each (default: all)")
    parser.add_argument("--results-dir", type=Path)
    parser.add_argument("--reuse", action="store_true", help="keep finished runs")
    parser.add_argument("--paired", metavar="PART,...",
                        help="measure these parts together, in alternating pairs")
    parser.add_argument("--repeats", type=int, default=4, help="pairs with --paired")
    args = parser.parse_args(argv)
    out = (args.results_dir or Path(tempfile.mkdtemp(prefix="flower-parts-"))).resolve()
    if args.paired:
        return paired(parts_off(args.paired), args.repeats, args.clients, args.rounds, out)
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
