"""Methods whose clients send their *update* (local model minus the global model they
received) through a lossy coder, with optional error feedback (topk-ef, qsgd), and may
receive the global model's change through the same coder.

A method supplies `coder(memory) -> UpdateCoder`: `encode(update, seed) -> (records,
delivered)` (the records of a message and the dense float32 vector the receiver will decode,
bit for bit) and `decode(content, size) -> vector`; `memory` says whether its sender keeps an
error memory (an unbiased coder must then be made contractive, or the memory grows without
bound). Both sides build the same two: the uplink's (memory = `error-feedback`) and the
downlink's (memory = True: the server always keeps one).

Uplink. Client: `receive` remembers the received model as one flat float32 vector; the update
is the local model minus it, plus the error memory kept in `context.state` when
`error-feedback` is on; the memory becomes update - delivered, so what was computed is only
delayed, never lost. Server: decode_up = the model it sent + the decoded update, and
Flower's FedAvg averages the clients' models (= sent model + the weighted mean of updates).

Downlink (`downlink = "compressed"`; default "dense": the global model, fp32). The server
keeps the *broadcast model* B, the model synced clients hold, and its own error memory e.
Each round, with G the server's global model: D = G - B + e, C = coder(D), B <- B + C,
e <- D - C. A client that holds the previous B (its digest is mirrored per partition,
`NodeMirrors`) is sent C and the digest it applies to; any other client gets B dense. The
client keeps B in `context.state`, checks the digest and adds C, so both sides hold the
same B bit for bit; a stale digest refuses (an error reply) and the client is sent B next
time (a resync, counted). Clients train from B; the central evaluation scores G, the
server's model (`accuracy_broadcast` scores B beside it).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np
from flwr.app import ConfigRecord, RecordDict
from torch import nn

from fedsqueeze.codecs import CodecError

from .base import ClientSide, SqueezeStrategy
from .state import NodeMirrors, ServerState, digest, load_array_list, save_array_list
from .tensors import Arrays, flatten, keyed, load_arrays, model_arrays, numel, unflatten
from .training import derive_seed

DOWNLINKS = ("dense", "compressed")
BASE_RECORD = "update-base"  # down message: the digest of the broadcast model C applies to
HELD_RECORD = "update.held"  # client state: the broadcast model it holds


class UpdateCoder:
    """How a method codes an update vector (both directions)."""

    def encode(self, update: np.ndarray, seed: int) -> tuple[dict[str, Any], np.ndarray]:
        """(records of the message by name, the dense vector the receiver decodes)."""
        raise NotImplementedError

    def decode(self, content: RecordDict, size: int) -> np.ndarray:
        """The flat float32 update (`size` entries) a message carries."""
        raise NotImplementedError


def check_downlink(config) -> None:
    config.check_choice("downlink", DOWNLINKS)


@dataclasses.dataclass
class Broadcast:
    """The server's broadcast model, its error memory, and this round's change."""

    model: np.ndarray
    error: np.ndarray
    previous: bytes = b""          # digest of the broadcast model before this round's change
    change: dict[str, Any] | None = None  # the coded change C of this round (records)

    @property
    def version(self) -> bytes:
        return digest(self.model)


class UpdateStrategy(SqueezeStrategy):
    """decode_up = the model sent this round + the update the coder reads; optionally the
    downlink sends the broadcast model's change (see the module docstring)."""

    def __init__(self, method, model: nn.Module) -> None:
        super().__init__(method, model)
        self.up_coder: UpdateCoder = method.coder(memory=self.config.error_feedback)
        self.down_coder: UpdateCoder = method.coder(memory=True)
        self.compressed = self.config.downlink == "compressed"
        self.broadcast: Broadcast | None = None
        self.holders: NodeMirrors[bytes, bytes] = NodeMirrors()
        self.down_stats = {"change": 0, "full": 0}
        self._resyncs_before = 0

    def begin_round(self, server_round: int, arrays: Arrays) -> None:
        self.down_stats = {"change": 0, "full": 0}
        self._resyncs_before = self.holders.resyncs
        if not self.compressed:
            return
        g = flatten(list(arrays.values()))
        b = self.broadcast
        if b is None:  # the first broadcast is the model itself
            self.broadcast = Broadcast(g.copy(), np.zeros_like(g))
        else:
            d = np.add(np.subtract(g, b.model, dtype=np.float32), b.error, dtype=np.float32)
            records, delivered = self.down_coder.encode(
                d, derive_seed(self.settings.seed, server_round, 0xD0))
            previous = b.version
            model = np.add(b.model, delivered, dtype=np.float32)
            self.broadcast = Broadcast(model, np.subtract(d, delivered, dtype=np.float32),
                                       previous, records)
        # clients train from the broadcast model; their updates are added to it
        self.round_arrays = keyed(self.keys, unflatten(self.broadcast.model, self.shapes))

    def encode_down(self, server_round: int, node_id: int, arrays: Arrays) -> RecordDict:
        if not self.compressed:
            return super().encode_down(server_round, node_id, arrays)
        b = self.broadcast
        partition = self.directory.partition_of(node_id)
        self.holders.stage(partition, b.version)
        held = self.holders.get(partition)
        if b.change is not None and held == b.previous:
            self.down_stats["change"] += 1
            return RecordDict({**b.change, BASE_RECORD: ConfigRecord({"digest": b.previous.hex()})})
        if held is None:  # a client synced before that lost its copy (failure, restart)
            self.holders.reset(partition)  # counts a resync; an older copy (sat out) does not
        self.down_stats["full"] += 1
        return self.model_codec.encode(self.round_arrays)

    def decode_update(self, server_round: int, node_id: int, content: RecordDict,
                      size: int) -> np.ndarray:
        return self.up_coder.decode(content, size)

    def decode_up(self, server_round: int, node_id: int, content: RecordDict) -> Arrays:
        update = self.decode_update(server_round, node_id, content, numel(self.shapes))
        model = np.add(flatten(list(self.round_arrays.values())), update, dtype=np.float32)
        if self.compressed:
            partition = self.directory.partition_of(node_id)
            staged = self.holders.staged(partition)
            if staged is not None:
                self.holders.commit(partition, staged)
        return keyed(self.keys, unflatten(model, self.shapes))

    def end_round(self, server_round: int) -> None:
        self.holders.end_round()

    def client_state_lost(self, partition_id: int) -> None:
        self.holders.forget(partition_id)

    def models_to_evaluate(self, server_round: int) -> dict[str, list[dict[str, np.ndarray]]]:
        if not self.compressed or self.broadcast is None:
            return {}
        return {"broadcast": [dict(keyed(self.keys, unflatten(self.broadcast.model,
                                                               self.shapes)))]}

    def round_metrics(self, server_round: int) -> dict[str, Any]:
        if not self.compressed:
            return {}
        return {"update_down_change": self.down_stats["change"],
                "update_down_full": self.down_stats["full"],
                "update_resyncs": self.holders.resyncs - self._resyncs_before}

    def export_state(self) -> ServerState:
        if not self.compressed or self.broadcast is None:
            return ServerState()
        state = self.holders.export(lambda version: ({}, {"version": version.hex()}))
        state.arrays.update({"broadcast": self.broadcast.model,
                             "broadcast-error": self.broadcast.error})
        return state

    def import_state(self, state: ServerState) -> None:
        if not self.compressed or "broadcast" not in state.arrays:
            return
        self.holders.restore(state, lambda arrays, meta: bytes.fromhex(meta["version"]))
        # the next round's change is coded against this model: clients that hold it get it
        self.broadcast = Broadcast(np.asarray(state.arrays["broadcast"], np.float32),
                                   np.asarray(state.arrays["broadcast-error"], np.float32))


class UpdateClient(ClientSide):
    """Computes the update and keeps the error memory (config field `error_feedback`);
    applies a coded change of the broadcast model to the one it holds."""

    #: the context.state record of the error memory
    error_record: ClassVar[str]

    def __init__(self, method) -> None:
        super().__init__(method)
        self.up_coder: UpdateCoder = method.coder(memory=self.method.config.error_feedback)
        self.down_coder: UpdateCoder = method.coder(memory=True)
        self._received = np.zeros(0, dtype=np.float32)

    def receive(self, content: RecordDict, state: RecordDict, model: nn.Module) -> nn.Module:
        if BASE_RECORD in content.config_records:
            load_arrays(model, self._apply_change(content, state, model))
        else:
            model = super().receive(content, state, model)
        self._received = flatten(list(model_arrays(model).values()))
        if self.method.config.downlink == "compressed":
            save_array_list(state, HELD_RECORD, [self._received])
        return model

    def _apply_change(self, content: RecordDict, state: RecordDict, model: nn.Module
                      ) -> list[np.ndarray]:
        saved = load_array_list(state, HELD_RECORD)
        wanted = str(content.config_records[BASE_RECORD]["digest"])
        if saved is None or digest(saved[0][0]).hex() != wanted:
            raise CodecError(f"the change applies to broadcast model {wanted}, this client "
                             f"holds {'none' if saved is None else digest(saved[0][0]).hex()}")
        held = saved[0][0]
        change = self.down_coder.decode(content, held.size)
        shapes = [a.shape for a in model_arrays(model).values()]
        return unflatten(np.add(held, change, dtype=np.float32), shapes)

    def update(self, model: nn.Module, state: RecordDict) -> np.ndarray:
        """local - received, plus the error memory when error feedback is on."""
        update = np.subtract(flatten(list(model_arrays(model).values())), self._received,
                             dtype=np.float32)
        if self.method.config.error_feedback:
            saved = load_array_list(state, self.error_record)
            if saved is not None and saved[0][0].shape == update.shape:
                update = np.add(update, saved[0][0], dtype=np.float32)
        return update

    def send_update(self, model: nn.Module, state: RecordDict, seed: int) -> RecordDict:
        """Code the update; keep update - delivered as the error memory (when on)."""
        update = self.update(model, state)
        records, delivered = self.up_coder.encode(update, seed)
        if self.method.config.error_feedback:
            save_array_list(state, self.error_record,
                            [np.subtract(update, delivered, dtype=np.float32)])
        return RecordDict(records)

    def metrics(self, model: nn.Module, state: RecordDict) -> dict[str, float]:
        saved = load_array_list(state, self.error_record)
        return {"error-norm": float(np.linalg.norm(saved[0][0])) if saved is not None else 0.0}
