"""The comparison table of `fedsqueeze compare`: runs of one setting side by side, computed
from their rounds.jsonl alone (so a test can recompute every figure), plus its plots.

Per run: final and best central accuracy, seconds per round, the bytes of every layer and
direction, and for each target accuracy (the reference run's final accuracy minus 1, 3 and
5 points by default) the first evaluated round at or above it, the bytes (message layer,
and wire when measured; up + down) spent until then, and the reference's bytes to the same
target divided by this run's ("x fewer than FedAvg").
"""

from __future__ import annotations

import csv
import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

DIRECTIONS = ("up", "down")
LAYERS = ("payload", "bound", "message", "wire")
TARGET_DROPS = (0.01, 0.03, 0.05)


@dataclasses.dataclass
class Reached:
    """When a run first reached a target accuracy (None: never)."""

    target: float
    round: int | None
    message_bytes: int | None
    wire_bytes: int | None
    upload_bytes: int | None  # message layer, uplink only


@dataclasses.dataclass
class CompareRow:
    label: str
    keys: dict[str, Any]
    rounds: int
    final_accuracy: float | None
    best_accuracy: float | None
    seconds_per_round: float
    totals: dict[str, int | None]   # "<layer>_<direction>", None where not measured
    reached: list[Reached]
    ratios: list[float | None]      # reference bytes to target / this run's, per target
    status: str = "completed"       # or how the run ended early ("failed after round 12")

    @property
    def message_total(self) -> int:
        return (self.totals["message_up"] or 0) + (self.totals["message_down"] or 0)

    @property
    def payload_over_bound(self) -> float | None:
        """Payload bytes up + down over their information-theoretic bound (None where a round
        has no bound: runs from before bounds were metered, masked quantized values)."""
        t = self.totals
        if t["bound_up"] is None or t["bound_down"] is None:
            return None
        bound = t["bound_up"] + t["bound_down"]
        payload = (t["payload_up"] or 0) + (t["payload_down"] or 0)
        return payload / bound if bound else None


def _total(rows: list[dict[str, Any]], key: str) -> int | None:
    values = [r.get(key) for r in rows]
    return None if not values or any(v is None for v in values) else int(sum(values))


def reached(rows: list[dict[str, Any]], target: float) -> Reached:
    """The first evaluated round with accuracy >= target, and the bytes spent until then."""
    message = wire = upload = 0
    for row in rows:
        message += row["message_up"] + row["message_down"]
        upload += row["message_up"]
        if wire is not None:
            wire = None if row.get("wire_up") is None else \
                wire + row["wire_up"] + (row.get("wire_down") or 0)
        if row["accuracy"] is not None and row["accuracy"] >= target:
            return Reached(target, row["round"], message, wire, upload)
    return Reached(target, None, None, None, None)


def targets_of(reference_rows: list[dict[str, Any]],
               drops: Sequence[float] = TARGET_DROPS) -> list[float]:
    """The reference's final accuracy minus each drop."""
    accuracies = [r["accuracy"] for r in reference_rows if r["accuracy"] is not None]
    if not accuracies:
        raise ValueError("the reference run has no evaluated round: no targets")
    return [accuracies[-1] - drop for drop in drops]


def compare_row(label: str, keys: dict[str, Any], rows: list[dict[str, Any]],
                targets: Sequence[float], reference: list[Reached] | None) -> CompareRow:
    accuracies = [r["accuracy"] for r in rows if r["accuracy"] is not None]
    hits = [reached(rows, t) for t in targets]
    ratios = []
    for i, hit in enumerate(hits):
        base = reference[i].message_bytes if reference else None
        ratios.append(base / hit.message_bytes if base and hit.message_bytes else None)
    return CompareRow(
        label=label, keys=keys, rounds=len(rows),
        final_accuracy=accuracies[-1] if accuracies else None,
        best_accuracy=max(accuracies) if accuracies else None,
        seconds_per_round=sum(r["seconds"] for r in rows) / max(len(rows), 1),
        totals={f"{layer}_{d}": _total(rows, f"{layer}_{d}")
                for layer in LAYERS for d in DIRECTIONS},
        reached=hits, ratios=ratios)


def compare_rows(runs: Sequence[tuple[str, dict[str, Any], list[dict[str, Any]]]],
                 drops: Sequence[float] = TARGET_DROPS) -> list[CompareRow]:
    """Rows for (label, keys, rounds.jsonl rows) runs; the first run is the reference."""
    if not runs:
        raise ValueError("nothing to compare")
    targets = targets_of(runs[0][2], drops)
    reference = [reached(runs[0][2], t) for t in targets]
    return [compare_row(label, keys, rows, targets, reference) for label, keys, rows in runs]


# ----------------------------------------------------------------------------- rendering
def _mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.2f}"


def _acc(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def _x(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.1f}x"


def keys_text(keys: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in keys.items()) or "-"


def markdown(rows: list[CompareRow], title: str, drops: Sequence[float] = TARGET_DROPS
             ) -> str:
    wire = any(r.totals["wire_up"] is not None for r in rows)
    head = ["run", "keys", "final acc", "best acc", "s/round", "up MB", "down MB",
            "total MB", "payload MB", "payload/bound"] + (["wire MB"] if wire else [])
    for drop in drops:
        head += [f"-{drop * 100:g} pt: round", "MB", "vs ref"]
    lines = [title, "",
             f"Targets: the reference's ({rows[0].label}) final accuracy "
             f"{_acc(rows[0].final_accuracy)} minus " + ", ".join(f"{d * 100:g}" for d in drops)
             + " points; MB = message layer, up + down, until the first evaluated round at "
             "or above the target; vs ref = the reference's MB to that target / this run's; "
             "payload/bound = codec payload bytes over their information-theoretic bound "
             "(fedsqueeze.codecs.bounds).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * (len(head) - 2)]
    for r in rows:
        label = r.label if r.status == "completed" else f"{r.label} ({r.status})"
        cells = [label, keys_text(r.keys), _acc(r.final_accuracy), _acc(r.best_accuracy),
                 f"{r.seconds_per_round:.2f}", _mb(r.totals["message_up"]),
                 _mb(r.totals["message_down"]), _mb(r.message_total),
                 _mb((r.totals["payload_up"] or 0) + (r.totals["payload_down"] or 0)),
                 "-" if r.payload_over_bound is None else f"{r.payload_over_bound:.3f}"]
        if wire:
            cells.append("-" if r.totals["wire_up"] is None else
                         _mb(r.totals["wire_up"] + (r.totals["wire_down"] or 0)))
        for hit, ratio in zip(r.reached, r.ratios):
            cells += ["-" if hit.round is None else str(hit.round), _mb(hit.message_bytes),
                      _x(ratio)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_csv(rows: list[CompareRow], path: Path) -> None:
    fields = ["label", "keys", "status", "rounds", "final_accuracy", "best_accuracy",
              "seconds_per_round", *rows[0].totals]
    for i in range(len(rows[0].reached)):
        fields += [f"target{i + 1}", f"target{i + 1}_round", f"target{i + 1}_message_bytes",
                   f"target{i + 1}_wire_bytes", f"target{i + 1}_upload_bytes",
                   f"target{i + 1}_ratio"]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(fields)
        for r in rows:
            cells: list[Any] = [r.label, keys_text(r.keys), r.status, r.rounds, r.final_accuracy,
                                r.best_accuracy, r.seconds_per_round, *r.totals.values()]
            for hit, ratio in zip(r.reached, r.ratios):
                cells += [hit.target, hit.round, hit.message_bytes, hit.wire_bytes,
                          hit.upload_bytes, ratio]
            writer.writerow(["" if c is None else c for c in cells])


def plot(runs: Sequence[tuple[str, list[dict[str, Any]]]], rows: list[CompareRow],
         out_dir: Path) -> list[Path]:
    """accuracy_vs_bytes.png (up + down, and uplink only, log x) and bytes_to_target.png."""
    paths = []
    fig, axes = plt.subplots(1, 2, figsize=(15, 5.5), sharey=True)
    for ax, directions, what in ((axes[0], DIRECTIONS, "up + down"), (axes[1], ("up",),
                                                                      "uplink only")):
        for i, (label, run_rows) in enumerate(runs):
            total, xs, ys = 0, [], []
            for row in run_rows:
                total += sum(row[f"message_{d}"] for d in directions)
                if row["accuracy"] is not None:
                    xs.append(total)
                    ys.append(row["accuracy"])
            ax.plot(xs, ys, marker=".", markersize=3, linewidth=1, label=label,
                    color=plt.cm.tab10.colors[i % 10], linestyle=("-", "--", ":")[i // 10 % 3])
        ax.set_xscale("log")
        ax.set(xlabel=f"cumulative message bytes, {what} (log)",
               title=f"Accuracy vs bytes ({what})")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("central test accuracy")
    axes[1].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    paths.append(out_dir / "accuracy_vs_bytes.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 0.3 * len(rows) + 1.5))
    hit = [(r.label, r.reached[0].message_bytes) for r in rows]
    labels = [label for label, _ in hit]
    values = [b if b is not None else math.nan for _, b in hit]
    ax.barh(labels, values)
    for y, value in enumerate(values):
        if math.isnan(value):
            ax.text(0, y, " never reached", va="center", fontsize=7)
    ax.set_xscale("log")
    ax.invert_yaxis()
    ax.set(xlabel="message bytes (up + down) to reach the first target (log)",
           title=f"Bytes to {rows[0].reached[0].target:.4f} accuracy")
    ax.tick_params(axis="y", labelsize=7)
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    paths.append(out_dir / "bytes_to_target.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths
