"""FedDST against its baselines at equal upload bytes (the paper's comparison).

    python bench/feddst.py [--rounds 400] [--out bench/results/feddst] [--methods all]
                           [--jobs 2]
    python bench/feddst.py --rounds 30            # a quick check

`--jobs N` runs N methods at once, each in its own process with one torch thread (a small
model trains faster that way than with intra-op threads on two cores); seconds per round are
then per process.

The spec's setting: FashionMNIST, `mnistnet` (261,840 parameters), the `shards` split (400
clients x 2 label-sorted shards of 20 images), 20 clients per round sampled without
replacement, E = 10 local epochs, batch 32, SGD lr 0.01 momentum 0.9 weight decay 1e-3,
S = 0.8, alpha = 0.01, dR = 15, R_end = rounds / 2. Runs, on the same code path (the real round
loop and ClientApp in this process, `deploy/inprocess.py`):

* fedavg; fedavgm (Flower's FedAvgM, server momentum 0.9);
* randommask: feddst with alpha = 0 (the initial magnitude mask of the random init, fixed);
* feddst (plain: union of client masks, re-pruned by |w|) and feddst-explore.

Every client keeps a fifth of its 40 images as its local test set (`local-test-fraction`
0.2); after the last round the global model is evaluated on all 400 (`accuracy_local`, mean).
The table: final central and local accuracy, cumulative upload and download bytes (payload
and message layer), and the central accuracy each method had when its cumulative upload
(message bytes) first reached FedDST's total and half of it (the last evaluated round within
the cap). A second table: per readjustment, the positions clients regrew, those that entered
the global mask, and of those how many were still there at the next readjustment.
Writes `<out>.csv`, `<out>.md`, `<out>.png` (accuracy against cumulative upload).
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from fedsqueeze.deploy.inprocess import Federation

SETTING = {"dataset": "fashion-mnist", "model": "mnistnet", "partitioner": "shards",
           "shards-per-partition": 2, "shard-size": 20, "num-partitions": 400,
           "fraction-train": 0.05, "min-nodes": 2, "local-epochs": 10, "batch-size": 32,
           "lr": 0.01, "momentum": 0.9, "weight-decay": 1e-3, "local-test-fraction": 0.2,
           "local-eval-clients": 0}
FEDDST = {"method": "feddst", "feddst.sparsity": 0.8, "feddst.alpha": 0.01,
          "feddst.readjust-every": 15}
METHODS = {
    "fedavg": {"method": "fedavg"},
    "fedavgm": {"method": "fedavgm", "fedavgm.server-momentum": 0.9},
    "randommask": {**FEDDST, "feddst.alpha": 0.0},
    "feddst": FEDDST,
    "feddst-explore": {**FEDDST, "feddst.variant": "explore"},
}


def run(name: str, keys: dict, rounds: int, eval_every: int, results: Path) -> dict:
    started = time.monotonic()
    fed = Federation({**SETTING, **keys, "num-server-rounds": rounds, "eval-every": eval_every,
                      "local-eval-every": rounds}, clients=400, results_dir=results,
                     run_name=name)
    rows = fed.run(rounds)
    return {"name": name, "rows": rows, "seconds_per_round": (time.monotonic() - started)
            / rounds}


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def run_all(names: list[str], rounds: int, eval_every: int, results_dir: Path, jobs: int
            ) -> list[dict]:
    if jobs <= 1:
        out = []
        for i, name in enumerate(names, start=1):
            print(f"[{i}/{len(names)}] {name} ...", flush=True)
            out.append(run(name, METHODS[name], rounds, eval_every, results_dir))
        return out
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_one_thread) as pool:
        futures = [pool.submit(run, name, METHODS[name], rounds, eval_every, results_dir)
                   for name in names]
        return [future.result() for future in futures]


def cumulative(rows: list[dict], key: str) -> list[int]:
    total, out = 0, []
    for row in rows:
        total += row[key]
        out.append(total)
    return out


def accuracy_within(rows: list[dict], cap: float) -> float | None:
    """Central accuracy of the last evaluated round whose cumulative upload is within cap."""
    best = None
    for row, up in zip(rows, cumulative(rows, "message_up")):
        if up > cap:
            break
        if row["accuracy"] is not None:
            best = row["accuracy"]
    return best


def summarize(result: dict) -> dict:
    rows = result["rows"]
    last = rows[-1]
    out = {"name": result["name"], "final_accuracy": last["accuracy"],
           "local_accuracy": last.get("accuracy_local"),
           "seconds_per_round": result["seconds_per_round"]}
    for key in ("payload_up", "payload_down", "message_up", "message_down"):
        out[key] = sum(r[key] for r in rows)
    return out


def readjustments(result: dict) -> list[dict]:
    return [{"run": result["name"], "round": r["round"], "grown": r["feddst_grown"],
             "entered": r["feddst_entered"], "dropped": r["feddst_dropped"],
             "survived_from_last": r["feddst_survived"], "density": r["feddst_density"]}
            for r in result["rows"] if r.get("feddst_readjusted")]


def fmt(value: float | None, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=400)
    parser.add_argument("--eval-every", type=int, default=5)
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"comma-separated, of {', '.join(METHODS)}")
    parser.add_argument("--out", type=Path, default=Path("bench/results/feddst"))
    parser.add_argument("--jobs", type=int, default=1, help="methods run at once")
    args = parser.parse_args()
    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(names) - set(METHODS))
    if unknown:
        parser.error(f"unknown methods {unknown}: choose from {', '.join(METHODS)}")
    results_dir = Path(tempfile.mkdtemp(prefix="feddst-bench-"))
    print(f"runs in {results_dir}", flush=True)
    results = run_all(names, args.rounds, args.eval_every, results_dir, args.jobs)

    table = [summarize(r) for r in results]
    reference = next((s for s in table if s["name"] == "feddst"), table[0])
    cap = reference["message_up"]
    for summary, result in zip(table, results):
        summary["accuracy_at_cap"] = accuracy_within(result["rows"], cap)
        summary["accuracy_at_half_cap"] = accuracy_within(result["rows"], cap / 2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    lines = [f"FedDST benchmark: {args.rounds} rounds, FashionMNIST, mnistnet, 400 clients x 2 "
             f"shards of 20, 20 per round; upload cap = {reference['name']}'s cumulative "
             f"upload, {cap / 1e6:.2f} MB (message layer); {args.jobs} run(s) at once", "",
             "| method | central acc | local acc | up payload MB | up message MB | "
             "down payload MB | down message MB | acc at cap | acc at cap/2 | s/round |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in table:
        lines.append(f"| {s['name']} | {fmt(s['final_accuracy'])} | {fmt(s['local_accuracy'])} "
                     f"| {s['payload_up'] / 1e6:.2f} | {s['message_up'] / 1e6:.2f} | "
                     f"{s['payload_down'] / 1e6:.2f} | {s['message_down'] / 1e6:.2f} | "
                     f"{fmt(s['accuracy_at_cap'])} | {fmt(s['accuracy_at_half_cap'])} | "
                     f"{s['seconds_per_round']:.2f} |")
    events = [e for r in results for e in readjustments(r)]
    if events:
        lines += ["", "Readjustments: positions regrown by clients (distinct), entered the "
                  "global mask, still in it at the next readjustment",
                  "", "| run | round | grown | entered | dropped | survived from last |",
                  "|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {e['run']} | {e['round']} | {e['grown']} | {e['entered']} | "
                  f"{e['dropped']} | {fmt(e['survived_from_last'], 'd')} |" for e in events]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    _plot(results, args.out.with_suffix(".png"))
    return 0


def _plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for result in results:
        rows = result["rows"]
        ups = cumulative(rows, "message_up")
        points = [(u / 1e6, r["accuracy"]) for u, r in zip(ups, rows)
                  if r["accuracy"] is not None]
        if points:
            ax.plot(*zip(*points), label=result["name"])
    ax.set_xlabel("cumulative upload, MB (message layer)")
    ax.set_ylabel("central test accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
