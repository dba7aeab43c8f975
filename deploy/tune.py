"""`fedsqueeze tune PRESET --row LABEL --grid KEY=V1,V2 ...`: pick a row's settings on the
clients' held-out local splits, never on the test set.

Every point of the grid runs the row on the preset's work with `local-test-fraction` of each
client's data held out (`--holdout`, 0.1) and a federated evaluation of the global model on
those splits after the last round; the point with the highest mean held-out accuracy
(`accuracy_local`, ties: fewer message bytes) is chosen. The test-set accuracy is neither used
nor shown. Runs go to `<out>/runs/<point>/` and are reused when finished with the same keys, as
in `fedsqueeze compare`; the ranking goes to `<out>/tune.md`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

from fedsqueeze.server.compare import keys_text
from fedsqueeze.server.results import read_run
from fedsqueeze.strategies.settings import ConfigError, UserValue

from .compare import Preset, Progress, reusable, run_inprocess, run_keys, run_lock, slug
from .config_check import checked_run_config, find_app_dir, parse_overrides


def parse_grid(texts: list[str]) -> dict[str, list[UserValue]]:
    """`KEY=V1,V2,...` (TOML values) -> {KEY: [V1, V2, ...]}."""
    grid: dict[str, list[UserValue]] = {}
    for text in texts:
        key, sep, values = text.partition("=")
        if not sep or not key.strip() or not values.strip():
            raise ConfigError(f"--grid {text!r}: expected KEY=V1,V2,...")
        grid[key.strip()] = [parse_overrides([f"{key.strip()}={v.strip()}"])[key.strip()]
                             for v in values.split(",")]
    return grid


def tune(preset: Preset, row: str, grid: dict[str, list[UserValue]], *, rounds: int,
         holdout: float = 0.1, out: Path | None = None,
         echo: Callable[[str], None] = print) -> dict[str, UserValue]:
    """Run every grid point of `row` and return the chosen keys (the row's, with the point)."""
    rows = dict(preset.runs)
    if row not in rows:
        raise ConfigError(f"--row {row!r} is not a run of preset {preset.name!r}; its runs: "
                          f"{', '.join(preset.labels())}")
    if not grid:
        raise ConfigError("tune needs at least one --grid KEY=V1,V2,...")
    if not 0 < holdout < 1:
        raise ConfigError(f"--holdout {holdout}: must be in (0, 1)")
    held_out = {"local-test-fraction": holdout, "local-eval-every": rounds}
    points = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    wanted = [(point, run_keys(preset, {**rows[row], **point, **held_out}, rounds))
              for point in points]
    for _, keys in wanted:  # every point checked before the first one runs
        checked_run_config(find_app_dir(), keys)
    out = Path(out or Path("tune") / f"{preset.name}-{slug(row)}-r{rounds}").resolve()
    (out / "runs").mkdir(parents=True, exist_ok=True)
    echo(f"tune {row} on {preset.name}: {len(points)} points, {rounds} rounds, "
         f"{holdout:.0%} of each client's data held out -> {out}")
    progress = Progress(rounds * len(points), echo, accuracy=False)
    for index, (point, keys) in enumerate(wanted, start=1):
        label = keys_text(point)
        run_dir = out / "runs" / slug(label)
        with run_lock(run_dir, echo):
            if reusable(run_dir, keys, "simulation"):
                progress.start(index, len(points), label, " (finished earlier: reused)")
                progress.skip(rounds)
                continue
            progress.start(index, len(points), label)
            run_inprocess(label, keys, preset.clients, run_dir, progress)
    ranked = sorted((_score(out / "runs" / slug(keys_text(p)), p) for p in points),
                    key=lambda s: (-s[0], s[2]))
    text = _table(preset, row, rounds, holdout, ranked)
    (out / "tune.md").write_text(text)
    echo(text)
    return {**rows[row], **ranked[0][3]}


def _score(run_dir: Path, point: dict[str, UserValue]
           ) -> tuple[float, float, float, dict[str, UserValue]]:
    """(mean held-out accuracy, worst client's, message MB up + down, point); a run that
    failed or never evaluated locally scores -1."""
    _, rows, summary = read_run(run_dir)
    last = rows[-1] if rows else {}
    local = last.get("accuracy_local")
    total = sum(r.get("message_up", 0) + r.get("message_down", 0) for r in rows) / 1e6
    if summary.get("status") != "completed" or local is None:
        return -1.0, -1.0, total, point
    return float(local), float(last.get("accuracy_local_min", -1.0)), total, point


def _table(preset: Preset, row: str, rounds: int, holdout: float,
           ranked: list[tuple[float, float, float, dict[str, UserValue]]]) -> str:
    lines = [f"fedsqueeze tune {preset.name} --row {row!r} ({rounds} rounds, {holdout:.0%} of "
             "each client's data held out; ranked by the mean held-out accuracy of the global "
             "model after the last round; the test set is not used)", "",
             "| point | held-out acc (mean) | held-out acc (worst client) | message MB |",
             "|---|---:|---:|---:|"]
    for mean, worst, total, point in ranked:
        shown = "failed" if mean < 0 else f"{mean:.4f}"
        lines.append(f"| {keys_text(point)} | {shown} | "
                     f"{'-' if worst < 0 else f'{worst:.4f}'} | {total:.2f} |")
    lines += ["", f"chosen: {keys_text(ranked[0][3])}", ""]
    return "\n".join(lines)
