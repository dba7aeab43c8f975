"""Round overhead of runs: round time minus the slowest client's local training.

    python bench/round_overhead.py results/RUN [results/RUN ...]

Each round's `seconds` (ServerApp, from configure to evaluated) minus the largest
`fit_seconds` a client of that round reported (pure local SGD) is what the framework costs:
messaging, polling, process start-up, data loading, decoding, aggregation, evaluation.
Round 1 is shown apart (first imports and data caches).
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

from fedsqueeze.server.results import read_run


def overheads(run_dir: Path) -> list[tuple[int, float, float]]:
    _, rounds, _ = read_run(run_dir)
    rows = []
    for r in rounds:
        fits = [c["fit_seconds"] for c in r["per_client"].values() if "fit_seconds" in c]
        rows.append((r["round"], r["seconds"], r["seconds"] - max(fits, default=0.0)))
    return rows


def main(paths: list[str]) -> None:
    print(f"{'run':40} {'round 1 s':>10} {'later rounds s':>15} {'overhead s':>11}")
    for path in paths:
        rows = overheads(Path(path))
        if not rows:
            print(f"{Path(path).name:40} (no finished round)")
            continue
        later = rows[1:] or rows
        print(f"{Path(path).name:40} {rows[0][1]:10.2f} "
              f"{statistics.median(r[1] for r in later):15.2f} "
              f"{statistics.median(r[2] for r in later):11.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
