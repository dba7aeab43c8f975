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
from pathlib import Path
from typing import Any

# Keys every row of rounds.jsonl has (bytes are of that round, all clients together).
ROUND_KEYS = ("round", "accuracy", "loss", "payload_up", "payload_down", "message_up",
              "message_down", "wire_up", "wire_down", "nonzeros", "params", "seconds")
SUMMARY_KEYS = ("method", "engine", "transport", "flwr_version", "rounds", "final_accuracy",
                "best_accuracy", "payload_up", "payload_down", "message_up", "message_down",
                "wire_up", "wire_down", "seconds")
BYTE_TOTALS = ("payload_up", "payload_down", "message_up", "message_down", "wire_up",
               "wire_down")


def default_results_dir() -> Path:
    """`$FEDSQUEEZE_RESULTS_DIR`, else ./results of the directory the run was started from."""
    return Path(os.environ.get("FEDSQUEEZE_RESULTS_DIR", Path.cwd() / "results"))


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


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
    def __init__(self, run_dir: Path, config: dict[str, Any]) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir = run_dir
        self.config = config
        self.rows: list[dict[str, Any]] = []
        _write_json(run_dir / "config.json", config)
        self._rounds = open(run_dir / "rounds.jsonl", "w", encoding="utf-8")

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

    def finish(self, status: str, seconds: float, error: str | None = None) -> dict[str, Any]:
        self._rounds.close()
        accuracies = [r["accuracy"] for r in self.rows if r["accuracy"] is not None]
        summary: dict[str, Any] = {
            "method": self.config["run_config"]["method"],
            "engine": self.config["engine"],
            "transport": self.config["transport"],
            "flwr_version": self.config["flwr_version"],
            "rounds": len(self.rows),
            "final_accuracy": accuracies[-1] if accuracies else None,
            "best_accuracy": max(accuracies) if accuracies else None,
            "seconds": seconds,
            "status": status,
            "error": error,
            "failed_replies": sum(r.get("failed_replies", 0) for r in self.rows),
        }
        for key in BYTE_TOTALS:
            values = [r[key] for r in self.rows]
            summary[key] = None if any(v is None for v in values) else int(sum(values))
        _write_json(self.run_dir / "summary.json", summary)
        return summary


def rewrite_run(run_dir: Path, rounds: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    """Replace rounds.jsonl and summary.json (the deployment launcher adds the wire layer)."""
    tmp = run_dir / "rounds.jsonl.tmp"
    tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rounds))
    tmp.replace(run_dir / "rounds.jsonl")
    _write_json(run_dir / "summary.json", summary)


def _rows(path: Path) -> list[dict[str, Any]]:
    """The rows of rounds.jsonl; a truncated last line (what a killed run leaves) is skipped
    with a warning, a broken line before it is an error naming the line."""
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
    rounds = _rows(rounds_path) if rounds_path.exists() else []
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
