"""FedPara and pFedPara against FedAvg, and FedPara under other methods.

    python bench/fedpara.py sweep    [--rounds 50] [--models fc2,cnn] [--gammas 0.1,0.3,0.5]
                                     [--dataset fashion-mnist] [--out bench/results/fedpara]
    python bench/fedpara.py personal [--rounds 100] [--out bench/results/pfedpara]
    python bench/fedpara.py compose  [--rounds 10] [--out bench/results/fedpara-compose]
    python bench/fedpara.py sweep --models vgg16-gn --dataset cifar10 --gammas 0.1 --rounds 20
                                     # for a GPU machine

sweep: FashionMNIST, 10 clients, pathological 2 classes per client (deterministic
assignment), each model as FedAvg and as FedPara at every gamma with fp32 and fp16 factors,
the same rounds; the table gives final accuracy, payload and message bytes, and the bytes
(up + down, message layer) each run needed to first reach FedAvg's final accuracy minus 1
point (FedAvg's own figure beside it; "-" where a run never got there).

personal: the spec's pFedPara setting: FashionMNIST, 100 clients x 2 label-sorted shards of
300 (`shards`), 10 clients per round, E = 5, batch 10, lr 0.01 x 0.999^(t-1), gamma 0.5, the
784-200-200-10 MLP (`mlp-200`); pFedPara's personalised accuracy (each client's own model on
its local test split, a fifth of its data), FedAvg's and FedPara's global model on the same
splits, and the bytes.

compose: FedPara x resfed and FedPara x fedsparsify, 10 rounds on fc2, beside each part alone:
bytes per round (payload, up + down). fedsparsify prunes to 0.5 here, with and without FedPara
(pruning 90% of the factors of an already compact layer leaves nothing to learn with).

Every run is the real round loop and ClientApp in this process (`deploy/inprocess.py`).
Writes `<out>.csv` and `<out>.md`.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

from fedsqueeze.deploy.inprocess import Federation
from fedsqueeze.strategies.claims import acc, mb

SWEEP = {"dataset": "fashion-mnist", "partitioner": "pathological", "partition-classes": 2,
         "class-assignment": "deterministic", "min-nodes": 2, "eval-every": 5,
         "lr": 0.01, "batch-size": 32}
PERSONAL = {"dataset": "fashion-mnist", "model": "mlp-200", "partitioner": "shards",
            "shards-per-partition": 2, "shard-size": 300, "num-partitions": 100,
            "fraction-train": 0.1, "min-nodes": 2, "local-epochs": 5, "batch-size": 10,
            "lr": 0.01, "lr-decay": 0.999, "fedpara.gamma": 0.5, "local-test-fraction": 0.2,
            "local-eval-clients": 0, "eval-every": 10}
COMPOSE = {"dataset": "fashion-mnist", "model": "fc2", "partitioner": "iid", "min-nodes": 2,
           "fedpara.gamma": 0.3, "eval-every": 10,
           "fedsparsify.final-sparsity": 0.5}  # factors are already compact: prune less


def federate(name: str, keys: dict, rounds: int, clients: int, results: Path) -> dict:
    started = time.monotonic()
    fed = Federation({**keys, "num-server-rounds": rounds}, clients=clients,
                     results_dir=results, run_name=name)
    rows = fed.run(rounds)
    totals = {k: sum(r[k] for r in rows) for k in ("payload_up", "payload_down",
                                                   "message_up", "message_down")}
    return {"name": name, "rows": rows, **totals, "final_accuracy": rows[-1]["accuracy"],
            "local_accuracy": rows[-1].get("accuracy_local"),
            "local_accuracy_min": rows[-1].get("accuracy_local_min"),
            "seconds_per_round": (time.monotonic() - started) / rounds}


def bytes_to_reach(rows: list[dict], target: float) -> int | None:
    """Message bytes (up + down) until the first evaluated round at >= target accuracy."""
    total = 0
    for row in rows:
        total += row["message_up"] + row["message_down"]
        if row["accuracy"] is not None and row["accuracy"] >= target:
            return total
    return None


def write(out: Path, results: list[dict], lines: list[str]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    fields = [k for k in results[0] if k != "rows"]
    with open(out.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(results)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def sweep(args: argparse.Namespace, results_dir: Path) -> int:
    gammas = [float(g) for g in args.gammas.split(",")]
    lines = [f"FedPara sweep: {args.dataset}, 10 clients, 2 classes each, {args.rounds} rounds; "
             "bytes to target = message bytes up + down until FedAvg's final accuracy - 1 "
             "point", "",
             "| model | run | final acc | payload MB | message MB | to target MB | "
             "vs FedAvg |", "|---|---|---:|---:|---:|---:|---:|"]
    results = []
    for model in args.models.split(","):
        base = {**SWEEP, "dataset": args.dataset, "model": model,
                "fedpara.layers": args.layers}
        runs = [(f"{model}-fedavg", {**base, "method": "fedavg"})]
        runs += [(f"{model}-fedpara-g{g}-{dtype}", {**base, "method": "fedpara",
                                                    "fedpara.gamma": g, "dense.dtype": dtype})
                 for g in gammas for dtype in ("fp32", "fp16")]
        group = []
        for name, keys in runs:
            print(f"{name} ...", flush=True)
            group.append(federate(name, keys, args.rounds, 10, results_dir))
        target = group[0]["final_accuracy"] - 0.01
        reference = bytes_to_reach(group[0]["rows"], target)
        for r in group:
            r["model"], r["bytes_to_target"] = model, bytes_to_reach(r["rows"], target)
            ratio = (reference / r["bytes_to_target"] if reference and r["bytes_to_target"]
                     else None)
            lines.append(f"| {model} | {r['name']} | {acc(r['final_accuracy'])} | "
                         f"{mb(r['payload_up'] + r['payload_down'])} | "
                         f"{mb(r['message_up'] + r['message_down'])} | "
                         f"{mb(r['bytes_to_target'])} | "
                         f"{'-' if ratio is None else f'{ratio:.1f}x fewer'} |")
        results += group
    write(args.out, results, lines)
    return 0


def personal(args: argparse.Namespace, results_dir: Path) -> int:
    keys = {**PERSONAL, "local-eval-every": args.rounds}
    runs = [("fedavg", {**keys, "method": "fedavg"}),
            ("fedpara", {**keys, "method": "fedpara"}),
            ("pfedpara", {**keys, "method": "pfedpara"})]
    results = []
    for name, run_keys in runs:
        print(f"{name} ...", flush=True)
        results.append(federate(name, run_keys, args.rounds, 100, results_dir))
    lines = [f"pFedPara: FashionMNIST, 100 clients x 2 shards of 300, 10 per round, "
             f"{args.rounds} rounds, mlp-200, gamma 0.5; local acc = each client's model "
             "(pfedpara: its own; the others: the global one) on its local test split", "",
             "| run | local acc (mean) | local acc (min) | central acc | up payload MB | "
             "down payload MB | message MB |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['name']} | {acc(r['local_accuracy'])} | "
                     f"{acc(r['local_accuracy_min'])} | {acc(r['final_accuracy'])} | "
                     f"{mb(r['payload_up'])} | {mb(r['payload_down'])} | "
                     f"{mb(r['message_up'] + r['message_down'])} |")
    write(args.out, results, lines)
    return 0


def compose(args: argparse.Namespace, results_dir: Path) -> int:
    runs = [("fedavg", {"method": "fedavg"}),
            ("fedpara", {"method": "fedpara"})]
    for method in ("resfed", "fedsparsify"):
        runs += [(method, {"method": method}),
                 (f"fedpara x {method}", {"method": method, "model-transform": "fedpara"})]
    results = []
    for name, keys in runs:
        print(f"{name} ...", flush=True)
        results.append(federate(name, {**COMPOSE, **keys}, args.rounds, 10, results_dir))
    lines = [f"FedPara composed with other methods: fc2, FashionMNIST iid, 10 clients, "
             f"{args.rounds} rounds, gamma {COMPOSE['fedpara.gamma']}; payload bytes per "
             "round, up + down", "",
             "| run | payload per round MB | final acc |", "|---|---:|---:|"]
    for r in results:
        lines.append(f"| {r['name']} | {mb((r['payload_up'] + r['payload_down']) / args.rounds)}"
                     f" | {acc(r['final_accuracy'])} |")
    write(args.out, results, lines)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("sweep", "personal", "compose"))
    parser.add_argument("--rounds", type=int, default=0,
                        help="default: sweep 50, personal 100, compose 10")
    parser.add_argument("--models", default="fc2,cnn")
    parser.add_argument("--gammas", default="0.1,0.3,0.5")
    parser.add_argument("--layers", default="all",
                        help="fedpara.layers for the sweep (the CNN's bulk is its fc1)")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    args.rounds = args.rounds or {"sweep": 50, "personal": 100, "compose": 10}[args.what]
    default_out = {"sweep": "fedpara", "personal": "pfedpara", "compose": "fedpara-compose"}
    args.out = args.out or Path("bench/results") / default_out[args.what]
    results_dir = Path(tempfile.mkdtemp(prefix=f"fedpara-{args.what}-"))
    return {"sweep": sweep, "personal": personal, "compose": compose}[args.what](
        args, results_dir)


if __name__ == "__main__":
    sys.exit(main())
