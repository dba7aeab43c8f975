"""Catch-up downlinks: what takes a client that missed rounds to the current broadcast model.

A versioned downlink (`Compressed` with an update channel) sends synced clients the coded
change of the broadcast model B. A client that missed rounds holds an older version B_u; two
messages take it to the current B_v bit for bit, and the server sends the smaller (or B whole
when both are larger):

* values: B_v's values at the coordinates that changed since u (every other coordinate is the
  same in both), positions + fp32 values; small when the changes are sparse and overlap
  (top-k);
* replay: the coded changes since u, in order, each as it was broadcast; the client adds them
  one by one in float32 as the server did, so the sums round alike; small when each change
  is cheap but touches every coordinate (QSGD, sign) or carries few value bits (fp16 top-k).

`ChangeHistory` keeps, for the last `horizon` changes, the version each produced (its digest),
the coordinates it touched (a bit per coordinate) and its coded payloads: at most horizon x
(ceil(n / 8) + the largest change's payload) bytes plus 8 bytes per version, whatever the
number of clients (each client's mirror is the digest of the version it holds). A client
whose version is older than the horizon gets the full model.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from .state import ServerState

Payloads = dict[str, tuple[str, bytes]]  # record name -> (stype, codec bytes) of one change


class ChangeHistory:
    """The versions of the broadcast model and the coordinates each change touched."""

    def __init__(self, horizon: int) -> None:
        self.horizon = horizon
        self.versions: deque[bytes] = deque(maxlen=horizon + 1)
        self.changes: deque[np.ndarray] = deque(maxlen=horizon)  # packed bits, one per change
        self.payloads: deque[Payloads] = deque(maxlen=horizon)  # the coded changes
        self.size = 0

    def start(self, version: bytes, size: int) -> None:
        """A new broadcast model of `size` coordinates: no history."""
        self.versions.clear()
        self.changes.clear()
        self.payloads.clear()
        self.versions.append(version)
        self.size = size

    def record(self, version: bytes, changed: np.ndarray, payloads: Payloads) -> None:
        """The change to `version`, coded as `payloads`, touched the coordinates where
        `changed` is True."""
        self.versions.append(version)
        self.changes.append(np.packbits(changed.reshape(-1)))
        self.payloads.append(dict(payloads))

    def payloads_since(self, version: bytes) -> list[Payloads]:
        """The coded changes since `version` (it must be in the history), oldest first."""
        return list(self.payloads)[list(self.versions).index(version):]

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

    def export(self) -> ServerState:
        arrays = {f"change/{i}": bits for i, bits in enumerate(self.changes)}
        arrays.update({f"payload/{i}/{name}": np.frombuffer(data, np.uint8)
                       for i, change in enumerate(self.payloads)
                       for name, (_, data) in change.items()})
        stypes = [{name: stype for name, (stype, _) in change.items()}
                  for change in self.payloads]
        return ServerState(arrays, {"versions": [v.hex() for v in self.versions],
                                    "size": self.size, "stypes": stypes})

    def restore(self, state: ServerState) -> None:
        self.versions = deque((bytes.fromhex(v) for v in state.meta.get("versions", [])),
                              maxlen=self.horizon + 1)
        count = max(len(self.versions) - 1, 0)
        self.changes = deque((np.asarray(state.arrays[f"change/{i}"], np.uint8)
                              for i in range(count)), maxlen=self.horizon)
        self.payloads = deque(
            ({name: (stype, np.asarray(state.arrays[f"payload/{i}/{name}"], np.uint8).tobytes())
              for name, stype in stypes.items()}
             for i, stypes in enumerate(state.meta.get("stypes", [{}] * count))),
            maxlen=self.horizon)
        self.size = int(state.meta.get("size", 0))
