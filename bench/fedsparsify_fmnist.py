"""FedSparsify's reference setting on FashionMNIST (spec: ../shared/specs/fedsparsify.md), through
the real app (Flower simulation, Ray engine), and the seed's Table 2 from measured results.

    python bench/fedsparsify_fmnist.py                          # full: T = 200, E = 4, all s_f
    python bench/fedsparsify_fmnist.py --rounds 30 --epochs 1 --sparsities 0.9   # quick check
    python bench/fedsparsify_fmnist.py --runs dense,global:0.9 # a subset
    python bench/fedsparsify_fmnist.py --table-only --results-dir DIR   # table of finished runs
    python bench/fedsparsify_fmnist.py --engine deployment --rounds 30 --epochs 1 \
        --runs dense,global:0.9,local:0.9      # SuperLink + 10 SuperNodes: adds wire bytes

Setting: 10 clients, all participate, label-pairs split (sorted by label, 20 chunks of 3000,
clients 2j and 2j+1 share classes {2j, 2j+1}), fc2 784-128-128-10 with Glorot-uniform weights
and zero biases, inputs uint8/256, SGD lr 0.02 no momentum, batch 32, seed 1990, central
evaluation on the 10k test set every round; n = 3, f = 1, t_0 = 1, T = rounds.

Each run is one `fedsqueeze.deploy.launch.simulate.simulate(...)` call into `<results-dir>/<name>`;
a run whose summary says "completed" is reused, not rerun. The table goes to stdout and to
`<results-dir>/table-T<rounds>-E<epochs>.md`. Communication is reported two ways: the paper's
count (non-zeros down x participants + non-zeros up, in parameters, + one bit per parameter
per Local upload) and our measured payload and message bytes; with `--engine deployment` (a
SuperLink and one SuperNode per client over gRPC on this machine) also the wire bytes, TCP
payload through each SuperNode's relay. Seconds per round are the ServerApp's round times
(configure to evaluated).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from fedsqueeze.deploy.config_check import find_app_dir
from fedsqueeze.deploy.launch.deployment import DeployOptions, deploy
from fedsqueeze.deploy.launch.simulate import simulate
from fedsqueeze.server.results import read_run

SPARSITIES = (0.8, 0.85, 0.9, 0.95, 0.99)
PAPER = {  # the seed's Table 2 (FashionMNIST, 10 learners): accuracy by s_f
    "dense": 0.7489, 0.8: 0.74, 0.85: 0.735, 0.9: 0.749, 0.95: 0.735, 0.99: 0.687}


def base_config(rounds: int, epochs: int, seed: int) -> dict[str, object]:
    return {
        "dataset": "fashion-mnist", "partitioner": "label-pairs", "partition-classes": 2,
        "model": "fc2", "model-init": "glorot", "input-scale": 256.0,
        "num-server-rounds": rounds, "local-epochs": epochs, "batch-size": 32, "lr": 0.02,
        "momentum": 0.0, "weight-decay": 0.0, "seed": seed, "fraction-train": 1.0,
        "min-nodes": 10, "eval-every": 1, "round-timeout": 1800.0,
    }


def run_specs(args) -> list[tuple[str, dict[str, object]]]:
    """(run name, method keys) of every run asked for."""
    tag = f"T{args.rounds}-E{args.epochs}"
    if args.runs:
        wanted = [w.strip() for w in args.runs.split(",") if w.strip()]
    else:
        wanted = ["dense"] + [f"{v}:{s}" for v in ("global", "local") for s in args.sparsities]
    specs = []
    for w in wanted:
        if w == "dense":
            specs.append((f"dense-{tag}", {"method": "fedavg"}))
            continue
        variant, _, s = w.partition(":")
        if variant not in ("global", "local") or not s:
            sys.exit(f"--runs: {w!r} is not dense, global:<s_f> or local:<s_f>")
        specs.append((f"{variant}{float(s)}-{tag}", {
            "method": "fedsparsify", "fedsparsify.variant": variant,
            "fedsparsify.final-sparsity": float(s)}))
    return specs


def summarize(run_dir: Path) -> dict[str, object] | None:
    try:
        config, rounds, summary = read_run(run_dir)
    except (FileNotFoundError, ValueError):
        return None
    if not rounds:
        return None
    last = rounds[-1]
    rc = config.get("run_config", {})
    key = "dense" if rc.get("method") == "fedavg" else float(rc.get("fedsparsify.final-sparsity"))
    paper = paper_bits = 0
    for row in rounds:
        if "paper_comm_params" in row:
            paper += row["paper_comm_params"]
            paper_bits += row["paper_comm_bits"]
        else:  # dense FedAvg: the whole model down to every client and back up
            paper += len(row["clients"]) * row["params"] * 2
            paper_bits += 32 * len(row["clients"]) * row["params"] * 2
    seconds = [r["seconds"] for r in rounds]
    return {
        "name": run_dir.name,
        "key": key,
        "status": summary.get("status", "running"),
        "rounds": len(rounds),
        "accuracy": last["accuracy"],
        "best": max((r["accuracy"] for r in rounds if r["accuracy"] is not None), default=None),
        "sparsity": 1 - last["nonzeros"] / last["params"],
        "target": last.get("target_sparsity"),
        "nonzeros": last["nonzeros"],
        "params": last["params"],
        "paper_mparams": paper / 1e6,
        "paper_mb": paper_bits / 8e6,   # incl. Local's mask bits
        **{k: sum(r[k] for r in rounds) for k in ("payload_up", "payload_down",
                                                   "message_up", "message_down")},
        **{k: (sum(r[k] for r in rounds) if all(r.get(k) is not None for r in rounds) else None)
           for k in ("wire_up", "wire_down")},
        "engine": config.get("engine", rc.get("engine", "simulation")),
        "s_per_round": statistics.median(seconds[1:] or seconds),
        "down_last": last["payload_down"] / max(len(last["clients"]), 1),
    }


def mb(x: float | None) -> str:
    return "-" if x is None else f"{x / 1e6:.2f}"


def table(rows: list[dict[str, object]]) -> str:
    dense = next((r for r in rows if r["name"].startswith("dense")), None)
    head = ("| run | rounds | s_f target | sparsity | accuracy (best) | "
            "seed Table 2 acc (T=200, E=4) | non-zeros | "
            "model fp32 nnz MB | paper comm Mparams (x) | paper comm MB incl. masks | "
            "payload up MB | payload down MB | message up MB | message down MB | "
            "wire up MB | wire down MB | total payload vs dense | s/round |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        paper_acc = PAPER.get(r["key"])
        ratio = comm_x = "-"
        if dense:
            total = r["payload_up"] + r["payload_down"]
            ratio = f"x{(dense['payload_up'] + dense['payload_down']) / total:.2f}"
            comm_x = f"x{dense['paper_mparams'] / r['paper_mparams']:.2f}"
        lines.append(
            f"| {r['name']}{'' if r['status'] == 'completed' else ' (' + str(r['status']) + ')'}"
            f" | {r['rounds']} | {'-' if r['target'] is None else round(r['target'], 4)}"
            f" | {r['sparsity']:.4f} | {r['accuracy']:.4f} ({r['best']:.4f})"
            f" | {'-' if paper_acc is None else paper_acc} | {r['nonzeros']:,}"
            f" | {r['nonzeros'] * 4 / 1e6:.3f} | {r['paper_mparams']:.1f} ({comm_x})"
            f" | {r['paper_mb']:.1f}"
            f" | {mb(r['payload_up'])} | {mb(r['payload_down'])} | {mb(r['message_up'])}"
            f" | {mb(r['message_down'])} | {mb(r['wire_up'])} | {mb(r['wire_down'])}"
            f" | {ratio} | {r['s_per_round']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=200, help="T = num-server-rounds")
    ap.add_argument("--epochs", type=int, default=4, help="E = local epochs")
    ap.add_argument("--sparsities", type=lambda s: [float(x) for x in s.split(",")],
                    default=list(SPARSITIES), help="comma-separated s_f values")
    ap.add_argument("--runs", default="", help="e.g. dense,global:0.9,local:0.9 (overrides "
                    "--sparsities)")
    ap.add_argument("--seed", type=int, default=1990)
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--cpus-per-client", type=int, default=1)
    ap.add_argument("--gpus-per-client", type=float, default=0.0)
    ap.add_argument("--results-dir", type=Path, default=Path("results/fedsparsify-fmnist"))
    ap.add_argument("--table-only", action="store_true", help="only tabulate finished runs")
    ap.add_argument("--engine", choices=("simulation", "deployment"), default="simulation",
                    help="deployment: a SuperLink and --clients SuperNodes over gRPC, wire bytes")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    results = args.results_dir.resolve()
    results.mkdir(parents=True, exist_ok=True)
    specs = run_specs(args)
    app = find_app_dir()
    for name, keys in specs:
        done = summarize(results / name)
        if args.table_only or (done and done["status"] == "completed"):
            continue
        config = {**base_config(args.rounds, args.epochs, args.seed), **keys,
                  "results-dir": str(results), "run-name": name, "engine": args.engine}
        print(f"running {name} ({args.engine}) ...", flush=True)
        if args.engine == "deployment":
            result = deploy(app, config, results / name,
                            DeployOptions(clients=args.clients, echo=not args.quiet))
        else:
            result = simulate(app, config, results / name, clients=args.clients,
                              cpus_per_client=args.cpus_per_client,
                              gpus_per_client=args.gpus_per_client, echo=not args.quiet)
        if not result.succeeded:
            print(f"{name} failed: {result.status} (logs: {result.logs})", flush=True)
    rows = [r for name, _ in specs if (r := summarize(results / name))]
    engines = sorted({str(r["engine"]) for r in rows}) or [args.engine]
    text = (f"FedSparsify, FashionMNIST, {args.clients} clients, label-pairs, T = {args.rounds}, "
            f"E = {args.epochs} ({', '.join(engines)}; wire bytes exist only in deployment)\n\n"
            + table(rows))
    print(text)
    out = results / f"table-T{args.rounds}-E{args.epochs}.md"
    out.write_text(text + "\n")
    (results / f"table-T{args.rounds}-E{args.epochs}.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
