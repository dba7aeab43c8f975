"""State that outlives a message: per-node state on clients, mirrors of it on the server,
and a strategy's exported server state.

* Client side: Flower's `context.state` (a RecordDict kept per node and run in both engines,
  discarded when the handler raises). `save_array_list` / `load_array_list` keep a list of
  arrays there under one record name.
* Server side: `NodeMirrors` keeps what the server believes each client holds, keyed by
  partition id (node ids change when a SuperNode restarts), versioned as DESIGN.md 3a asks:
  a down message is encoded against a mirror and *staged*; the mirror advances (`commit`)
  only after the client's reply was received and decoded; a client whose reply never
  committed loses its mirror at the end of the round, so its next message is a full transfer
  (a resync, counted when the client had been synced before).
* Export: `ServerState` is a strategy's state as plain arrays plus JSON (no pickle), written
  as `state.npz` + `state.json` and read back with `allow_pickle=False`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

DIGEST_BYTES = 8
ARRAY_COUNT = "array-count"  # reserved key in the meta of a saved array list

S = TypeVar("S")
P = TypeVar("P")


def digest(*vectors: np.ndarray) -> bytes:
    """8-byte digest of float32 vectors' exact bits (names a state version on the wire)."""
    h = hashlib.blake2b(digest_size=DIGEST_BYTES)
    for v in vectors:
        h.update(np.ascontiguousarray(v, dtype="<f4").tobytes())
    return h.digest()


# --------------------------------------------------------------------------- client side
def save_array_list(state: RecordDict, name: str, arrays: Sequence[np.ndarray],
                    **meta: int | float | str | bool) -> None:
    """Keep `arrays` (and small `meta` values) in `context.state` under `name`."""
    state[name] = ArrayRecord({str(i): Array(np.ascontiguousarray(a))
                               for i, a in enumerate(arrays)})
    if ARRAY_COUNT in meta:
        raise ValueError(f"'{ARRAY_COUNT}' is reserved in the meta of '{name}'")
    state[f"{name}.meta"] = ConfigRecord({**meta, ARRAY_COUNT: len(arrays)})


def load_array_list(state: RecordDict, name: str
                    ) -> tuple[list[np.ndarray], dict[str, Any]] | None:
    """(arrays, meta) saved under `name`, or None when this node has none yet."""
    record = state.array_records.get(name)
    meta = state.config_records.get(f"{name}.meta")
    if record is None or meta is None:
        return None
    values = dict(meta)
    arrays = [record[str(i)].numpy() for i in range(int(values.pop(ARRAY_COUNT)))]
    return arrays, values


# --------------------------------------------------------------------------- server side
class NodeMirrors(Generic[S, P]):
    """The server's copy of each client's state (S) plus what this round staged (P)."""

    def __init__(self) -> None:
        self.mirrors: dict[int, S] = {}
        self.pending: dict[int, P] = {}
        self.seen: set[int] = set()
        self.resyncs = 0

    def get(self, partition: int) -> S | None:
        return self.mirrors.get(partition)

    def reset(self, partition: int) -> None:
        """Forget a client's mirror (its next message is a full transfer); a client that had
        been synced before counts as a resync."""
        self.mirrors.pop(partition, None)
        if partition in self.seen:
            self.resyncs += 1

    def forget(self, partition: int) -> None:
        """The client lost its state: drop its mirror; the `reset` its next message does
        counts the resync."""
        self.mirrors.pop(partition, None)

    def stage(self, partition: int, pending: P) -> None:
        self.pending[partition] = pending

    def staged(self, partition: int) -> P | None:
        return self.pending.get(partition)

    def commit(self, partition: int, mirror: S) -> None:
        """The client's reply decoded: its mirror advances."""
        self.mirrors[partition] = mirror
        self.seen.add(partition)
        self.pending.pop(partition, None)

    def end_round(self) -> list[int]:
        """Clients whose down message never committed lose their mirror; returns them."""
        dropped = sorted(self.pending)
        for partition in dropped:
            self.mirrors.pop(partition, None)
        self.pending.clear()
        return dropped

    def export(self, arrays_of: Callable[[S], tuple[dict[str, np.ndarray], dict[str, Any]]]
               ) -> ServerState:
        """The mirrors (pending ones are not state: a round is atomic) as a ServerState."""
        state = ServerState(meta={"seen": sorted(self.seen), "resyncs": self.resyncs,
                                  "mirrors": {}})
        for partition, mirror in sorted(self.mirrors.items()):
            arrays, meta = arrays_of(mirror)
            state.meta["mirrors"][str(partition)] = meta
            state.arrays.update({f"{partition}/{k}": v for k, v in arrays.items()})
        return state

    def restore(self, state: ServerState,
                mirror_of: Callable[[dict[str, np.ndarray], dict[str, Any]], S]) -> None:
        self.mirrors, self.pending = {}, {}
        self.seen = {int(p) for p in state.meta.get("seen", [])}
        self.resyncs = int(state.meta.get("resyncs", 0))
        for partition, meta in state.meta.get("mirrors", {}).items():
            prefix = f"{partition}/"
            arrays = {k[len(prefix):]: v for k, v in state.arrays.items() if k.startswith(prefix)}
            self.mirrors[int(partition)] = mirror_of(arrays, meta)


# --------------------------------------------------------------------------- export
@dataclasses.dataclass
class ServerState:
    """A strategy's server state: named numpy arrays and JSON-able metadata."""

    arrays: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    def save(self, directory: Path) -> None:
        """Write `state.npz` and `state.json` atomically (temp file + rename)."""
        for key, value in self.arrays.items():
            if np.asarray(value).dtype.kind not in "biuf":
                raise ValueError(f"server state array {key!r} has dtype {np.asarray(value).dtype}:"
                                 " only bool, integer and float arrays are state (no pickle)")
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / "state.npz.tmp"
        with open(tmp, "wb") as f:
            np.savez(f, **self.arrays)
        tmp.replace(directory / "state.npz")
        tmp = directory / "state.json.tmp"
        tmp.write_text(json.dumps(self.meta, sort_keys=True, allow_nan=False))
        tmp.replace(directory / "state.json")

    @classmethod
    def load(cls, directory: Path) -> ServerState:
        with np.load(directory / "state.npz", allow_pickle=False) as f:
            arrays = {key: f[key] for key in f.files}
        return cls(arrays, json.loads((directory / "state.json").read_text()))
