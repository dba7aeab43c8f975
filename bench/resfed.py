"""ResFed vs FedAvg on FashionMNIST (10 clients, 2 classes each): accuracy vs bytes, and the
bytes each method needs to reach a target accuracy, in the shape of the paper's headline
(Mb up / Mb down per client to the target), warm-up (full-model) rounds shown separately.

    python bench/resfed.py --rounds 30 --sparsity 0.95 0.99 [--model fc2] [--target 0.70]
    python bench/resfed.py --table RUN_DIR [RUN_DIR ...]     # only tabulate finished runs

Runs are Flower simulations through the launcher (the same ServerApp/ClientApp as
deployments); results go to --results-dir (default /tmp/fedsqueeze-bench-resfed). Byte
columns are the *payload* layer (codec bytes) unless marked `msg` (serialized Flower
messages). Mb = 10^6 bits, per client on average (total / clients), like the paper.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fedsqueeze.server.results import read_run

COMMON = {"partitioner": "pathological", "partition-classes": 2,
          "class-assignment": "deterministic", "round-timeout": 1200.0}


def run(name: str, results: Path, clients: int, rounds: int, model: str, extra: dict) -> Path:
    from fedsqueeze.deploy.config_check import find_app_dir
    from fedsqueeze.deploy.launch.simulate import simulate

    if (results / name / "summary.json").exists():
        return results / name
    config = {"results-dir": str(results), "run-name": name, "engine": "simulation",
              "num-server-rounds": rounds, "model": model, **COMMON, **extra}
    out = simulate(find_app_dir(), config, results / name, clients=clients, cpus_per_client=1,
                   gpus_per_client=0.0, echo=False)
    if not out.succeeded:
        raise SystemExit(f"{name}: {out.status}")
    return results / name


def mb(nbytes: float, clients: int) -> float:
    return nbytes * 8 / 1e6 / clients


def summarize(run_dir: Path, targets: list[float], clients: int) -> dict:
    config, rounds, _ = read_run(run_dir)
    cum = {"up": 0, "down": 0, "mup": 0, "mdown": 0, "warm_up": 0, "warm_down": 0}
    reached: dict[float, tuple[int, dict]] = {}
    for r in rounds:
        cum["up"] += r["payload_up"]
        cum["down"] += r["payload_down"]
        cum["mup"] += r["message_up"]
        cum["mdown"] += r["message_down"]
        cum["warm_up"] += r.get("payload_up_warmup", 0)
        cum["warm_down"] += r.get("payload_down_warmup", 0)
        for t in targets:
            if t not in reached and r["accuracy"] is not None and r["accuracy"] >= t:
                reached[t] = (r["round"], dict(cum))
    warm_up = sum(r.get("payload_up_warmup", 0) for r in rounds)
    warm_down = sum(r.get("payload_down_warmup", 0) for r in rounds)
    res_rows = [r for r in rounds if r.get("compression_up")]
    accs = [r["accuracy"] for r in rounds if r["accuracy"] is not None]
    return {
        "run": run_dir.name, "rounds": len(rounds), "final": accs[-1] if accs else None,
        "best": max(accs) if accs else None, "reached": reached,
        "total_up": cum["up"], "total_down": cum["down"],
        "warm_up": warm_up, "warm_down": warm_down,
        "cr_up": (sum(r["compression_up"] for r in res_rows) / len(res_rows)) if res_rows else None,
        "cr_down": (sum(r["compression_down"] for r in res_rows) / len(res_rows)
                    if res_rows else None),
        "bound": max((max(r["bound_ratio_up"] or 0, r["bound_ratio_down"] or 0)
                      for r in res_rows), default=None),
        "gap": sum(r.get("reconstruction_gap", 0) for r in rounds),
        "clients": clients,
    }


def table(rows: list[dict], targets: list[float]) -> str:
    c = rows[0]["clients"] if rows else 1
    head = (f"{'run':30} {'rnds':>4} {'final':>6} {'best':>6} | total Mb up/down (warm-up) "
            f"| CR up/down per residual rnd | max payload/bound | gap")
    lines = [head, "-" * len(head)]
    for s in rows:
        cr = (f"{s['cr_up']:.0f}x/{s['cr_down']:.0f}x" if s["cr_up"] else "1x (dense)")
        bound = f"{s['bound']:.3f}" if s["bound"] else "-"
        lines.append(
            f"{s['run']:30} {s['rounds']:4d} {s['final']:6.4f} {s['best']:6.4f} | "
            f"{mb(s['total_up'], c):.2f}/{mb(s['total_down'], c):.2f} "
            f"({mb(s['warm_up'], c):.2f}/{mb(s['warm_down'], c):.2f}) | {cr} | {bound} | "
            f"{s['gap']}")
    for t in targets:
        head = (f"to {t:.0%} accuracy: {'run':30} {'round':>5} {'Mb up':>8} {'Mb down':>8} "
                f"{'of which warm-up up/down':>25} {'Mb up/down msg':>16}")
        lines += ["", head, "-" * len(head)]
        for s in rows:
            if t in s["reached"]:
                rnd, cum = s["reached"][t]
                lines.append(
                    f"{'':>18}{s['run']:30} {rnd:5d} {mb(cum['up'], c):8.3f} "
                    f"{mb(cum['down'], c):8.3f} "
                    f"{mb(cum['warm_up'], c):12.3f}/{mb(cum['warm_down'], c):.3f}"
                    f"{mb(cum['mup'], c):10.3f}/{mb(cum['mdown'], c):.3f}")
            else:
                lines.append(f"{'':>18}{s['run']:30} not reached in {s['rounds']} rounds "
                             f"(best {s['best']:.4f})")
    lines.append(f"Mb = 1e6 bits of payload per client (average over {c} clients); warm-up = "
                 "full-model transfers (first participation), counted in the to-target columns "
                 "and also shown on their own.")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--model", default="fc2")
    ap.add_argument("--sparsity", type=float, nargs="+", default=[0.95, 0.99])
    ap.add_argument("--qe", type=int, default=1)
    ap.add_argument("--target", type=float, nargs="+", default=[0.60, 0.70],
                    help="accuracies to report the bytes-to-target for")
    ap.add_argument("--results-dir", type=Path, default=Path("/tmp/fedsqueeze-bench-resfed"))
    ap.add_argument("--table", nargs="*", type=Path, help="tabulate these finished runs only")
    ap.add_argument("--json", type=Path, help="also write the summaries here")
    args = ap.parse_args()
    if args.table:
        dirs = args.table
    else:
        dirs = [run(f"fedavg-{args.model}-r{args.rounds}", args.results_dir, args.clients,
                    args.rounds, args.model, {"method": "fedavg"})]
        for s in args.sparsity:
            dirs.append(run(f"resfed-{args.model}-s{s:g}-qe{args.qe}-r{args.rounds}",
                            args.results_dir, args.clients, args.rounds, args.model,
                            {"method": "resfed", "residual.sparsity-up": s,
                             "residual.sparsity-down": s, "residual.qe": args.qe}))
    rows = [summarize(d, args.target, args.clients) for d in dirs]
    print(table(rows, args.target))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, default=str))


if __name__ == "__main__":
    main()
