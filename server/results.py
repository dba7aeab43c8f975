"""The results of a run: `config.json`, `rounds.jsonl`, `summary.json` (a public schema).

`rounds.jsonl` gets one JSON object per finished round, flushed at once, so a run that dies
keeps every round it finished; `summary.json` is written at the end, also for a failed run
(`status` says which).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedsqueeze.strategies.sinks import RoundSink, deliver

# Keys every row of rounds.jsonl has (bytes are of that round, all clients together).
ROUND_KEYS = ("round", "accuracy", "loss", "payload_up", "payload_down", "message_up",
              "message_down", "wire_up", "wire_down", "nonzeros", "params", "seconds")
SUMMARY_KEYS = ("method", "engine", "transport", "flwr_version", "rounds", "final_accuracy",
                "best_accuracy", "payload_up", "payload_down", "message_up", "message_down",
                "wire_up", "wire_down", "seconds")
BYTE_TOTALS = ("payload_up", "payload_down", "message_up", "message_down", "wire_up",
               "wire_down", "bound_up", "bound_down")


def default_results_dir() -> Path:
    """`$FEDSQUEEZE_RESULTS_DIR`, else ./results of the directory the run was started from."""
    return Path(os.environ.get("FEDSQUEEZE_RESULTS_DIR", Path.cwd() / "results"))


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def _write_rows(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    """rounds.jsonl with exactly these rows (temp file + rename)."""
    tmp = run_dir / "rounds.jsonl.tmp"
    tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    tmp.replace(run_dir / "rounds.jsonl")


def _finite_or_null(value: Any) -> Any:
    """NaN and infinities become None: JSON has no token for them (a bare NaN is invalid)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_null(v) for v in value]
    return value


class ResultsWriter:
    def __init__(self, run_dir: Path, config: dict[str, Any],
                 rows: list[dict[str, Any]] | None = None,
                 sinks: Sequence[RoundSink] = ()) -> None:
        """A new run's results (or, with `rows`, a resumed run's: those rows are kept and
        the next ones appended); each row written also goes to `sinks`."""
        run_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir = run_dir
        self.config = config
        self.sinks = list(sinks)
        self.rows: list[dict[str, Any]] = list(rows or [])
        _write_json(run_dir / "config.json", config)
        _write_rows(run_dir, self.rows)
        (run_dir / "summary.json").unlink(missing_ok=True)  # the run is running (again)
        self._rounds = open(run_dir / "rounds.jsonl", "a", encoding="utf-8")

    @classmethod
    def resume(cls, run_dir: Path, after_round: int, run_config: dict[str, Any],
               note: dict[str, Any], sinks: Sequence[RoundSink] = ()) -> ResultsWriter:
        """Continue a run directory after round `after_round` (its checkpoint): rows of later
        rounds (written after the checkpoint) are dropped; config.json takes the resumed
        run's config and gains a `resumed` entry naming the keys that changed."""
        config, rounds, _ = read_run(run_dir)
        before = config.get("run_config", {})
        changed = {k: [before.get(k), v] for k, v in run_config.items()
                   if before.get(k) != v and k != "resume"}
        config["run_config"] = {**before, **run_config}
        config.setdefault("resumed", []).append({"after_round": after_round,
                                                 "changed": changed, **note})
        return cls(run_dir, config, [r for r in rounds if r["round"] <= after_round], sinks)

    def update_config(self, **entries: Any) -> None:
        self.config.update(entries)
        _write_json(self.run_dir / "config.json", self.config)

    def write_round(self, row: dict[str, Any]) -> None:
        missing = [k for k in ROUND_KEYS if k not in row]
        if missing:
            raise ValueError(f"round row lacks keys {missing}")
        row = _finite_or_null(row)
        self.rows.append(row)
        self._rounds.write(json.dumps(row, sort_keys=True, allow_nan=False) + "\n")
        self._rounds.flush()
        os.fsync(self._rounds.fileno())  # a row written is a row kept, whatever dies next
        deliver(self.sinks, row)

    def finish(self, status: str, seconds: float, error: str | None = None) -> dict[str, Any]:
        self._rounds.close()
        for sink in self.sinks:
            sink.close()
        self.sinks = []
        summary = summarize(self.config, self.rows, status, seconds, error)
        _write_json(self.run_dir / "summary.json", summary)
        return summary


STATUSES = ("completed", "failed", "interrupted", "server-lost")


def summarize(config: dict[str, Any], rows: list[dict[str, Any]], status: str, seconds: float,
              error: str | None = None) -> dict[str, Any]:
    """summary.json's content for a run's rows (`status` one of STATUSES)."""
    if status not in STATUSES:
        raise ValueError(f"status {status!r}: one of {', '.join(STATUSES)}")
    accuracies = [r["accuracy"] for r in rows if r["accuracy"] is not None]
    run_config = config.get("run_config", {})
    summary: dict[str, Any] = {
        "method": run_config.get("method"),
        "engine": config.get("engine"),
        "transport": config.get("transport"),
        "flwr_version": config.get("flwr_version"),
        "rounds": len(rows),
        "final_accuracy": accuracies[-1] if accuracies else None,
        "best_accuracy": max(accuracies) if accuracies else None,
        "seconds": seconds,
        "status": status,
        "error": error,
        "failed_replies": sum(r.get("failed_replies", 0) for r in rows),
    }
    for key in BYTE_TOTALS:
        values = [r.get(key) for r in rows]
        summary[key] = None if any(v is None for v in values) else int(sum(values))
    return summary


def close_run(run_dir: Path, status: str, error: str) -> dict[str, Any]:
    """Write summary.json for a run whose ServerApp could not (the launcher's view of how it
    ended); a summary the ServerApp wrote is kept under `server_summary`."""
    config, rows, previous = read_run(run_dir)
    summary = summarize(config, rows, status, sum(r.get("seconds", 0) for r in rows), error)
    if previous:
        summary["server_summary"] = {k: previous.get(k) for k in ("status", "error")}
    _write_json(run_dir / "summary.json", summary)
    return summary


def rewrite_run(run_dir: Path, rounds: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    """Replace rounds.jsonl and summary.json (the deployment launcher adds the wire layer)."""
    _write_rows(run_dir, rounds)
    _write_json(run_dir / "summary.json", summary)


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file (rounds.jsonl); a truncated last line (what a killed run
    leaves) is skipped with a warning, a broken line before it is an error naming the line."""
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    rows = []
    for number, line in enumerate(lines, start=1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            if number < len(lines):
                raise ValueError(f"{path}:{number} is not a JSON object: {err}") from None
            warnings.warn(f"{path}: skipping its truncated last line {number} (the run was "
                          "probably killed while writing it)", stacklevel=2)
    return rows


def read_run(run_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """(config, rounds, summary) of a results directory; clear errors if it is not one."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise FileNotFoundError(f"{run_dir} is not a fedsqueeze results directory "
                                "(no config.json)")
    config = json.loads((run_dir / "config.json").read_text())
    rounds_path = run_dir / "rounds.jsonl"
    rounds = read_rows(rounds_path) if rounds_path.exists() else []
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    return config, rounds, summary


def fmt_bytes(n: float | None) -> str:
    """Bytes for people: 473 B, 1.89 MB (decimal units, as network counts are quoted)."""
    if n is None:
        return "-"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")
