"""`fedsqueeze report RUN_DIR...`: a table of runs side by side and PNG plots.

Plots: accuracy vs round, accuracy vs cumulative bytes (wire where measured, else message;
log x axis), model size (non-zeros) vs round.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from .results import fmt_bytes, read_run  # noqa: E402


def fmt_acc(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def ratio(a: float | None, b: float | None) -> str:
    return "-" if not a or not b else f"{a / b:.3f}"


class Run:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.config, self.rounds, self.summary = read_run(self.path)

    @property
    def label(self) -> str:
        return self.path.name

    def total(self, key: str) -> int | None:
        if key in self.summary:
            return self.summary[key]
        values = [r.get(key) for r in self.rounds]
        return None if not values or any(v is None for v in values) else int(sum(values))

    def byte_layer(self) -> str:
        return "wire" if self.total("wire_up") is not None else "message"


def summary_table(runs: list[Run]) -> Table:
    table = Table(title="fedsqueeze results (bytes: total of all clients, per layer)")
    for column in ("run", "method", "engine", "status", "rounds", "final acc", "best acc",
                   "payload up", "payload down", "message up", "message down", "wire up",
                   "wire down", "msg/payload", "wire/msg", "seconds"):
        table.add_column(column, justify="left" if column in ("run", "method") else "right")
    for run in runs:
        s = run.summary
        msg = (run.total("message_up") or 0) + (run.total("message_down") or 0)
        pay = (run.total("payload_up") or 0) + (run.total("payload_down") or 0)
        wire = None if run.total("wire_up") is None else \
            run.total("wire_up") + (run.total("wire_down") or 0)
        table.add_row(
            run.label, str(run.config.get("run_config", {}).get("method", "?")),
            str(run.config.get("engine", "?")), str(s.get("status", "running?")),
            str(len(run.rounds)), fmt_acc(s.get("final_accuracy")),
            fmt_acc(s.get("best_accuracy")),
            *(fmt_bytes(run.total(k)) for k in ("payload_up", "payload_down", "message_up",
                                                "message_down", "wire_up", "wire_down")),
            ratio(msg, pay), ratio(wire, msg),
            "-" if s.get("seconds") is None else f"{s['seconds']:.1f}")
    return table


def round_table(run: Run) -> Table:
    """Per-round view of one run (accuracy and bytes per direction and layer)."""
    table = Table(title=f"{run.label}: per round")
    for column in ("round", "accuracy", "failed", "payload up", "payload down", "message up",
                   "message down", "wire up", "wire down", "non-zeros", "seconds"):
        table.add_column(column, justify="right")
    for r in run.rounds:
        table.add_row(str(r["round"]), fmt_acc(r["accuracy"]), str(r.get("failed_replies", 0)),
                      *(fmt_bytes(r[k]) for k in ("payload_up", "payload_down", "message_up",
                                                  "message_down", "wire_up", "wire_down")),
                      "-" if r["nonzeros"] is None else f"{r['nonzeros']:,}",
                      f"{r['seconds']:.2f}")
    return table


def _evaluated(run: Run) -> list[dict[str, Any]]:
    return [r for r in run.rounds if r["accuracy"] is not None]


def plot_runs(runs: list[Run], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []

    fig, ax = plt.subplots(figsize=(6, 4))
    for run in runs:
        rows = _evaluated(run)
        ax.plot([r["round"] for r in rows], [r["accuracy"] for r in rows], marker=".",
                label=run.label)
    ax.set(xlabel="round", ylabel="central test accuracy", title="Accuracy vs round")
    paths.append(_save(fig, ax, out_dir / "accuracy_vs_round.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    for run in runs:
        layer = run.byte_layer()
        cumulative, xs, ys = 0, [], []
        for r in run.rounds:
            cumulative += (r[f"{layer}_up"] or 0) + (r[f"{layer}_down"] or 0)
            if r["accuracy"] is not None:
                xs.append(cumulative)
                ys.append(r["accuracy"])
        ax.plot(xs, ys, marker=".", label=f"{run.label} ({layer} bytes)")
    ax.set_xscale("log")
    ax.set(xlabel="cumulative bytes, up + down (log)", ylabel="central test accuracy",
           title="Accuracy vs bytes sent")
    paths.append(_save(fig, ax, out_dir / "accuracy_vs_bytes.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    for run in runs:
        counted = [r for r in run.rounds if r["nonzeros"] is not None]  # any app's: none
        ax.plot([r["round"] for r in counted], [r["nonzeros"] for r in counted],
                marker=".", label=run.label)
    ax.set(xlabel="round", ylabel="non-zero parameters", title="Model size vs round")
    paths.append(_save(fig, ax, out_dir / "nonzeros_vs_round.png"))
    return paths


def _save(fig, ax, path: Path) -> Path:
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def report(run_dirs: list[Path], out_dir: Path | None, console: Console | None = None,
           per_round: bool = False) -> list[Path]:
    console = console or Console()
    runs = [Run(p) for p in run_dirs]
    if per_round:
        for run in runs:
            console.print(round_table(run))
    console.print(summary_table(runs))
    target = out_dir or (runs[0].path if len(runs) == 1 else Path.cwd() / "report")
    paths = plot_runs(runs, target)
    console.print("plots: " + ", ".join(str(p) for p in paths))
    return paths
