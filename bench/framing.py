"""What the wire adds to the messages of a compressed run: each gRPC call of a round, by kind.

    python bench/framing.py [--clients 10] [--rounds 5] [--row LABEL] [--results-dir DIR]
                            [RUN_DIR ...]

Without RUN_DIR it runs a row of `fmnist-fc2` (default: `fedpara x topk-ef-0.99-both`, the
compressed row whose wire / message issue 33 asked to bring from 1.96 to 1.3) as a deployment
(`fedsqueeze deploy`, the accelerated default) and reads that run; with RUN_DIR it reads
deployments that exist. For each it prints wire / message over the rounds, then every
kind of Fleet call (`summary.json`'s `wire_calls`, the whole run, polls included) per
SuperNode and round: how many calls, and their bytes by direction and HTTP/2 frame type
(HEADERS: gRPC headers, Flower's signature metadata among them; DATA: the protobufs, 5 B
gRPC prefix and 9 B frame header each).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from fedsqueeze.deploy.cli import main as cli
from fedsqueeze.deploy.compare import config_text, preset_named
from fedsqueeze.server.results import read_run

ROW = "fedpara x topk-ef-0.99-both"
FRAMES = ("HeadersFrame", "DataFrame", "WindowUpdateFrame", "RstStreamFrame")


def run_row(row: str, clients: int, rounds: int, results_dir: Path) -> Path:
    preset = preset_named("fmnist-fc2")
    keys = {**preset.setting, **dict(preset.runs)[row], "num-server-rounds": rounds}
    code = cli(["deploy", "--clients", str(clients), "--quiet", "--overwrite",
                "--results-dir", str(results_dir), "--run-name", "framing",
                "--run-config", config_text(keys)])
    if code != 0:
        sys.exit(f"the deployment failed (exit {code})")
    return results_dir / "framing"


def report(run_dir: Path) -> None:
    config, rounds, summary = read_run(run_dir)
    nodes = len(config.get("clients", {})) or 1
    message = sum(r["message_up"] + r["message_down"] for r in rounds)
    wire = sum(r["wire_up"] + r["wire_down"] for r in rounds)
    node_rounds = nodes * len(rounds)
    print(f"{run_dir}: {len(rounds)} rounds, {nodes} SuperNodes; message "
          f"{message / node_rounds:,.0f} B, wire {wire / node_rounds:,.0f} B per SuperNode "
          f"and round; wire/message {wire / message:.3f}")
    calls = summary.get("wire_calls", {})
    head = f"{'call':<24}{'calls':>7}" + "".join(
        f"{d + ' ' + f[:-5].lower():>16}" for d in ("up", "down") for f in FRAMES)
    print(head)
    for path, counts in sorted(calls.items(), key=lambda kv: -sum(
            v for k, v in kv[1].items() if k != "calls")):
        print(f"{path:<24}{counts.get('calls', 0) / node_rounds:>7.2f}" + "".join(
            f"{counts.get(f'{d} {f}', 0) / node_rounds:>16,.0f}"
            for d in ("up", "down") for f in FRAMES))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="*", type=Path)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--row", default=ROW, help=f"a row of fmnist-fc2 (default: {ROW})")
    parser.add_argument("--results-dir", type=Path)
    args = parser.parse_args()
    run_dirs = args.run_dirs
    if not run_dirs:
        results_dir = args.results_dir or Path(tempfile.mkdtemp(prefix="framing-"))
        run_dirs = [run_row(args.row, args.clients, args.rounds, results_dir.resolve())]
    for run_dir in run_dirs:
        report(run_dir)


if __name__ == "__main__":
    main()
