"""Checkpoints of a run: the global model and the strategy's exported state after round t.

`<run dir>/checkpoints/round-<t>/` holds `model/` and `strategy/` (each a `ServerState`:
`state.npz` + `state.json`, no pickle) and `checkpoint.json` (the round, when). A checkpoint
is written into a hidden temporary directory and renamed into place, so one either exists
whole or not at all; older ones are removed after the new one is in place. `--resume` reads
the latest.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from fedsqueeze.strategies.state import ServerState
from fedsqueeze.strategies.tensors import Arrays

CHECKPOINTS = "checkpoints"
PREFIX = "round-"


@dataclass
class Checkpoint:
    round: int
    arrays: Arrays
    state: ServerState
    path: Path


def save_checkpoint(run_dir: Path, server_round: int, arrays: Arrays, state: ServerState
                    ) -> Path:
    """Write round t's checkpoint atomically; returns its directory."""
    base = run_dir / CHECKPOINTS
    final = base / f"{PREFIX}{server_round:06d}"
    tmp = base / f".{PREFIX}{server_round:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    ServerState(dict(arrays), {"keys": list(arrays)}).save(tmp / "model")
    state.save(tmp / "strategy")
    (tmp / "checkpoint.json").write_text(json.dumps({
        "round": server_round,
        "written_utc": datetime.now(UTC).isoformat(timespec="seconds")}) + "\n")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in base.glob(f"{PREFIX}*"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Checkpoint | None:
    """The newest complete checkpoint of a run directory, or None."""
    found = sorted((run_dir / CHECKPOINTS).glob(f"{PREFIX}*"))
    if not found:
        return None
    path = found[-1]
    meta = json.loads((path / "checkpoint.json").read_text())
    model = ServerState.load(path / "model")
    arrays = {key: model.arrays[key] for key in model.meta["keys"]}
    return Checkpoint(int(meta["round"]), arrays, ServerState.load(path / "strategy"), path)
