"""Catch-up downlinks: which coordinates of the broadcast model changed since a version.

A versioned downlink (`Compressed` with an update channel) sends synced clients the coded
change of the broadcast model B. A client that missed rounds holds an older version B_u; what
takes it to the current B_v exactly is B_v's values at the coordinates that changed since u
(every other coordinate is the same in both), which is small when the changes are sparse
(top-k) and the client missed few rounds. Setting values (not adding deltas) makes the
client's B_v bit-identical to the server's, whatever the float rounding of the sums.

`ChangeHistory` keeps, for the last `horizon` changes, the version each produced (its digest)
and the coordinates it touched (a bit per coordinate): at most horizon x ceil(n / 8) bytes plus
8 bytes per version, whatever the number of clients (each client's mirror is the digest of the
version it holds). A client whose version is older than the horizon gets the full model.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from .state import ServerState


class ChangeHistory:
    """The versions of the broadcast model and the coordinates each change touched."""

    def __init__(self, horizon: int) -> None:
        self.horizon = horizon
        self.versions: deque[bytes] = deque(maxlen=horizon + 1)
        self.changes: deque[np.ndarray] = deque(maxlen=horizon)  # packed bits, one per change
        self.size = 0

    def start(self, version: bytes, size: int) -> None:
        """A new broadcast model of `size` coordinates: no history."""
        self.versions.clear()
        self.changes.clear()
        self.versions.append(version)
        self.size = size

    def record(self, version: bytes, changed: np.ndarray) -> None:
        """The change to `version` touched the coordinates where `changed` is True."""
        self.versions.append(version)
        self.changes.append(np.packbits(changed.reshape(-1)))

    def changed_since(self, version: bytes) -> np.ndarray | None:
        """The coordinates that changed since `version` (a bool per coordinate), or None when
        the history does not reach back to it."""
        if version not in self.versions:
            return None
        start = list(self.versions).index(version)
        union = np.zeros((self.size + 7) // 8, np.uint8)
        for bits in list(self.changes)[start:]:
            union |= bits
        return np.unpackbits(union, count=self.size).astype(bool)

    def versions_after(self, version: bytes) -> int:
        """How many changes a client holding `version` missed (it must be in the history)."""
        return len(self.versions) - 1 - list(self.versions).index(version)

    def export(self) -> ServerState:
        arrays = {f"change/{i}": bits for i, bits in enumerate(self.changes)}
        return ServerState(arrays, {"versions": [v.hex() for v in self.versions],
                                    "size": self.size})

    def restore(self, state: ServerState) -> None:
        self.versions = deque((bytes.fromhex(v) for v in state.meta.get("versions", [])),
                              maxlen=self.horizon + 1)
        count = max(len(self.versions) - 1, 0)
        self.changes = deque((np.asarray(state.arrays[f"change/{i}"], np.uint8)
                              for i in range(count)), maxlen=self.horizon)
        self.size = int(state.meta.get("size", 0))
