"""Several `fedsqueeze compare` folders in one table: the README's headline.

Each folder is one setting (full participation, half the clients per round, 10%, ...) with
its own reference run; a run's figures are read from the `table.csv` the comparison wrote,
so every cell here is one that `fedsqueeze compare` printed. Runs are matched by label.
A second table puts, for every run that has a twin without catch-up (label + " (no
catch-up)"), its downlink bytes with and without catch-up beside each other.
"""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

NO_CATCHUP = " (no catch-up)"


@dataclasses.dataclass
class Setting:
    """One comparison folder: its name, its title line and its rows by label."""

    name: str
    title: str
    rows: dict[str, dict[str, str]]

    @property
    def reference(self) -> str:
        return next(iter(self.rows))


def read_setting(folder: Path) -> Setting:
    table_csv, table_md = folder / "table.csv", folder / "table.md"
    if not table_csv.is_file() or not table_md.is_file():
        raise FileNotFoundError(f"{folder}: no table.csv and table.md; run `fedsqueeze compare "
                                "... --out` into it first")
    with open(table_csv, newline="") as f:
        rows = {row["label"]: row for row in csv.DictReader(f)}
    if not rows:
        raise FileNotFoundError(f"{table_csv}: holds no runs")
    title = table_md.read_text().splitlines()[0].removeprefix("fedsqueeze compare ").strip()
    return Setting(folder.resolve().name, title, rows)


def _mb(cell: str) -> str:
    return f"{int(cell) / 1e6:.2f}" if cell else "-"


def _fewer(cell: str) -> str:
    return f"{float(cell):.1f}x" if cell else "-"


def _labels(settings: Sequence[Setting], keep: Callable[[str], bool]) -> list[str]:
    seen: dict[str, None] = {}
    for setting in settings:
        seen.update((label, None) for label in setting.rows if keep(label))
    return list(seen)


def headline_markdown(settings: Sequence[Setting]) -> str:
    """Per run and setting: final accuracy, message bytes (up + down) until the first round at
    or above the setting's reference's final accuracy minus 1 point, and the reference's bytes
    to that point over the run's."""
    head = ["run"]
    for s in settings:
        head += [f"{s.name}: final acc", "MB to -1 pt", "fewer bytes"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for label in _labels(settings, lambda lb: not lb.endswith(NO_CATCHUP)):
        cells = [label]
        for s in settings:
            row = s.rows.get(label)
            if row is None:
                cells += ["", "", ""]
                continue
            final = row["final_accuracy"]
            cells += [f"{float(final):.4f}" if final else "-",
                      _mb(row["target1_message_bytes"]), _fewer(row["target1_ratio"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def catchup_markdown(settings: Sequence[Setting]) -> str:
    """Downlink message bytes (whole run) with and without catch-up, for runs with a twin."""
    twinned = [s for s in settings if any(lb.endswith(NO_CATCHUP) for lb in s.rows)]
    if not twinned:
        return ""
    head = ["run"]
    for s in twinned:
        head += [f"{s.name}: down MB, catch-up", "without"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    labels = [lb.removesuffix(NO_CATCHUP) for lb in _labels(twinned, lambda lb:
                                                             lb.endswith(NO_CATCHUP))]
    for label in labels:
        cells = [label]
        for s in twinned:
            with_, without = s.rows.get(label), s.rows.get(label + NO_CATCHUP)
            cells += [_mb(with_["message_down"]) if with_ else "",
                      _mb(without["message_down"]) if without else ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def side_by_side(folders: Sequence[Path]) -> str:
    """Both tables and a legend naming each setting, as markdown."""
    settings = [read_setting(Path(folder)) for folder in folders]
    legend = "\n".join(f"- **{s.name}** ({s.reference} is the reference): {s.title}"
                       for s in settings)
    parts = [legend, "", headline_markdown(settings)]
    catchup = catchup_markdown(settings)
    if catchup:
        parts += ["Downlink bytes with catch-up and without it (a client that missed a round "
                  "gets the whole model):", "", catchup]
    return "\n".join(parts)
