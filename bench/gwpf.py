"""GWPF sweep: bytes against accuracy over tau-freeze x thaw-quorum x local-steps.

    python bench/gwpf.py [--rounds 60] [--clients 10] [--out bench/results/gwpf]
                         [--tau 0.1,0.3,0.5] [--quorum 1,3] [--steps 5,20] [--tau-thaw 0.5]
                         [--set gwpf.alpha=0.9 ...]
    python bench/gwpf.py --timings [--model cnn] [--rounds 60] [--clients 10]
                         [--tau 0.3] [--quorum 3] [--steps 5]

`--timings` runs one setting with both thaw timings (two exchanges per round, and lagged)
side by side: bytes, accuracy and seconds per round.

The spec's setting: FashionMNIST, the `cnn` model (582,026 parameters), `--clients` clients
with Dirichlet(1) label skew, SGD lr 0.01, weight decay 0.01, batch 100. Every setting runs
the real round loop and ClientApp in this process (`deploy/inprocess.py`, deterministic), the
same number of rounds. Besides the grid it runs:

* a baseline per local-steps value: gwpf with tau-freeze = 0 (nothing ever freezes: every
  value travels both ways every round, i.e. FedAvg with H local steps, on the same code path
  and codecs);
* the reference: `value-ema-compat = true`, tau 0.5, quorum 1, H = 5.

Settings are chosen on a held-out split of the training data (`local-test-fraction` 0.1 per
client; the global model evaluated there after the last round, `accuracy_local`), and the
table reports the central test accuracy beside it. Bytes are payload bytes, up + down, thaw
signals included (the message layer is in the CSV too). Writes `<out>.csv`, `<out>.md` and
`<out>.png` (bytes relative to the baseline against final test accuracy).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import sys
import tempfile
from pathlib import Path

from fedsqueeze.deploy.inprocess import Federation
from fedsqueeze.server.results import read_run

SETTING = {"method": "gwpf", "dataset": "fashion-mnist", "model": "cnn",
           "partitioner": "dirichlet", "dirichlet-alpha": 1.0, "lr": 0.01,
           "weight-decay": 0.01, "batch-size": 100, "min-nodes": 2,
           "local-test-fraction": 0.1, "eval-every": 10}


def _fixed(pairs: list[str], parser: argparse.ArgumentParser) -> dict:
    """--set KEY=VALUE pairs as run-config values (TOML, strings may go unquoted)."""
    import tomllib

    fixed = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            parser.error(f"--set {pair!r}: expected KEY=VALUE")
        try:
            fixed[key.strip()] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            fixed[key.strip()] = value
    return fixed


def _floats(text: str) -> list[float]:
    return [float(t) for t in text.split(",") if t.strip()]


def run(name: str, keys: dict, rounds: int, clients: int, results: Path) -> dict:
    fed = Federation({**SETTING, **keys, "num-server-rounds": rounds,
                      "local-eval-every": rounds}, clients=clients, results_dir=results,
                     run_name=name)
    return summarize(name, keys, fed.run(rounds))


def summarize(name: str, keys: dict, rows: list[dict]) -> dict:
    """One setting's line: accuracies (global on the test set and on the clients' held-out
    splits, each client's own model on its split), bytes, freezing."""
    last = rows[-1]
    total = {k: sum(r[k] for r in rows) for k in ("payload_up", "payload_down", "message_up",
                                                  "message_down")}
    return {"name": name, **{k.replace("gwpf.", ""): v for k, v in keys.items()},
            "final_accuracy": last["accuracy"], "validation_accuracy": last["accuracy_local"],
            "validation_own": last.get("accuracy_local_own", last["accuracy_local"]),
            "payload": total["payload_up"] + total["payload_down"],
            "message": total["message_up"] + total["message_down"], **total,
            "frozen_fraction": last["gwpf_frozen_fraction"],
            "signal_bytes": sum(r["gwpf_signal_bytes"] for r in rows),
            "values_up": sum(r["gwpf_values_up"] for r in rows),
            "seconds_per_round": sum(r["seconds"] for r in rows) / len(rows),
            "rounds": len(rows)}


def saved_runs(directory: Path) -> list[dict]:
    """The lines of the runs a sweep left in `directory` (their rounds.jsonl and config)."""
    out = []
    for run_dir in sorted(p.parent for p in directory.glob("*/rounds.jsonl")):
        config, rows, _ = read_run(run_dir)
        keys = {k: config["run_config"][k] for k in (
            "gwpf.tau-freeze", "gwpf.thaw-quorum", "gwpf.local-steps", "gwpf.tau-thaw",
            "gwpf.alpha", "gwpf.unfreeze", "gwpf.value-ema-compat")}
        if rows and rows[-1].get("accuracy_local") is not None:  # not one still going
            out.append(summarize(run_dir.name, keys, rows))
    order = {"baseline": 0, "reference": 1}
    return sorted(out, key=lambda r: (order.get(r["name"].split("-")[0], 2), r["name"]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--tau", default="0.1,0.3,0.5")
    parser.add_argument("--quorum", default="1,3")
    parser.add_argument("--steps", default="5,20")
    parser.add_argument("--tau-thaw", default="0.5",
                        help="tau-thaw values (the grid's fourth axis; the spec's default 0.5)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/gwpf"))
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a run-config key fixed for every setting of the grid, e.g. "
                             "gwpf.alpha=0.9 or gwpf.unfreeze=apf (TOML value; repeatable)")
    parser.add_argument("--grid-only", action="store_true",
                        help="run the grid without the baselines and the reference (add its "
                             "runs to an earlier sweep's folder, then --table-from it)")
    parser.add_argument("--table-from", type=Path, metavar="SWEEP_DIR",
                        help="rebuild the table from the runs a sweep left there")
    parser.add_argument("--timings", action="store_true",
                        help="compare thaw-timing exchange vs lagged at one setting")
    args = parser.parse_args()
    SETTING["model"] = args.model
    fixed = _fixed(args.set, parser)
    if args.timings:
        return compare_timings(args)
    if args.table_from:
        return tabulate(saved_runs(args.table_from), args, fixed)
    steps = [int(s) for s in _floats(args.steps)]
    quorums = [int(q) for q in _floats(args.quorum)]
    results = Path(tempfile.mkdtemp(prefix="gwpf-sweep-"))
    print(f"runs in {results}", flush=True)

    runs = [] if args.grid_only else [
        (f"baseline-h{h}", {"gwpf.tau-freeze": 0.0, "gwpf.local-steps": h}) for h in steps]
    if not args.grid_only:
        runs.append(("reference", {"gwpf.value-ema-compat": True, "gwpf.tau-freeze": 0.5,
                                   "gwpf.thaw-quorum": 1, "gwpf.local-steps": 5}))
    thaws = _floats(args.tau_thaw)
    label = "".join(f"-{k.replace('gwpf.', '')}{v}" for k, v in fixed.items())
    runs += [(f"tau{t}-q{q}-h{h}" + (f"-thaw{u}" if thaws != [0.5] else "") + label,
              {**fixed, "gwpf.tau-freeze": t, "gwpf.thaw-quorum": q, "gwpf.local-steps": h,
               "gwpf.tau-thaw": u})
             for t, q, h, u in itertools.product(_floats(args.tau), quorums, steps, thaws)]
    rows = []
    for i, (name, keys) in enumerate(runs, start=1):
        print(f"[{i}/{len(runs)}] {name} ...", flush=True)
        rows.append(run(name, keys, args.rounds, args.clients, results))
        print(f"    test acc {rows[-1]['final_accuracy']:.4f}  payload "
              f"{rows[-1]['payload'] / 1e6:.1f} MB  {rows[-1]['seconds_per_round']:.1f} s/round",
              flush=True)
    if args.grid_only:
        print(f"grid only: add {results}/* to a sweep's folder and run --table-from on it")
        return 0
    return tabulate(rows, args, fixed)


def tabulate(rows: list[dict], args: argparse.Namespace, fixed: dict) -> int:
    baselines = {r["local-steps"]: r for r in rows if r["name"].startswith("baseline")}
    for row in rows:  # each against the baseline with its own local steps (same work)
        baseline = baselines.get(row["local-steps"], rows[0])
        row["bytes_vs_baseline"] = row["payload"] / baseline["payload"]
        row["accuracy_minus_baseline"] = row["final_accuracy"] - baseline["final_accuracy"]
        row["validation_minus_baseline"] = (row["validation_accuracy"]
                                            - baseline["validation_accuracy"])
        row["own_minus_baseline"] = row["validation_own"] - baseline["validation_own"]

    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=sorted({k for r in rows for k in r}))
        writer.writeheader()
        writer.writerows(rows)
    tuned = [r for r in rows if not r["name"].startswith(("baseline", "reference"))]
    lines = [f"GWPF sweep, {rows[0]['rounds']} rounds, {args.clients} clients, {args.model}, "
             f"{'fixed ' + str(fixed) + ', ' if fixed else ''}FashionMNIST "
             "Dirichlet(1); bytes = payload up + down, relative to the baseline "
             "(gwpf with tau-freeze = 0 and the same local steps: everything sent)", "",
             "(test acc: the global model on the test set; validation: on the clients' "
             "held-out splits, the global model and each client's own model, whose frozen "
             "coordinates are its own)", "",
             "| run | bytes vs baseline | test acc | Δ acc | validation acc | own model | "
             "Δ own | frozen | s/round |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['bytes_vs_baseline']:.3f} | {r['final_accuracy']:.4f}"
                     f" | {100 * r['accuracy_minus_baseline']:+.2f} | "
                     f"{r['validation_accuracy']:.4f} | {r['validation_own']:.4f} | "
                     f"{100 * r['own_minus_baseline']:+.2f} | {r['frozen_fraction']:.3f} | "
                     f"{r['seconds_per_round']:.1f} |")
    lines.append("")
    for label, key in (("the global model's validation", "validation_minus_baseline"),
                       ("the clients' own models' validation", "own_minus_baseline")):
        within = [r for r in tuned if r[key] >= -0.01]
        if not within:
            lines.append(f"chosen on {label}: no setting within 1 point of the baseline")
            continue
        best = min(within, key=lambda r: r["bytes_vs_baseline"])
        lines.append(f"chosen on {label} (within 1 point of the baseline, fewest bytes): "
                     f"{best['name']}: {best['bytes_vs_baseline']:.3f} of the baseline's "
                     f"bytes, global test accuracy {100 * best['accuracy_minus_baseline']:+.2f}"
                     f" points, own-model validation {100 * best['own_minus_baseline']:+.2f}")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    _plot(rows, args.out.with_suffix(".png"))
    return 0


def compare_timings(args: argparse.Namespace) -> int:
    results = Path(tempfile.mkdtemp(prefix="gwpf-timings-"))
    keys = {"gwpf.tau-freeze": _floats(args.tau)[0], "gwpf.thaw-quorum": int(_floats(
        args.quorum)[0]), "gwpf.local-steps": int(_floats(args.steps)[0])}
    rows = [run(timing, {**keys, "gwpf.thaw-timing": timing}, args.rounds, args.clients,
                results) for timing in ("exchange", "lagged")]
    print(f"GWPF thaw timings, {args.model}, {args.rounds} rounds, {args.clients} clients, "
          f"{keys}")
    print("| thaw-timing | payload up | payload down | message total | signal bytes | "
          "test acc | frozen | s/round |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['name']} | {r['payload_up']} | {r['payload_down']} | {r['message']} | "
              f"{r['signal_bytes']} | {r['final_accuracy']:.4f} | {r['frozen_fraction']:.3f} | "
              f"{r['seconds_per_round']:.2f} |")
    return 0


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        ax.scatter(r["bytes_vs_baseline"], r["final_accuracy"])
        ax.annotate(r["name"], (r["bytes_vs_baseline"], r["final_accuracy"]), fontsize=6)
    ax.set_xlabel("payload bytes up + down, relative to the baseline")
    ax.set_ylabel("final test accuracy")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
