"""Methods whose clients send their *update* (local model minus the global model they
received) through a lossy coder, with optional error feedback (topk-ef, qsgd).

Client: `receive` remembers the received model as one flat float32 vector; `update` is the
local model minus it, plus the error memory kept in `context.state` when error feedback is
on; `keep_remainder` stores what was computed but not delivered (update - what the server
will decode), so sent_t + e_t = u_t + e_(t-1) entry by entry in float32. Server: the decoded
update is added to the model it sent this round, and Flower's FedAvg averages the clients'
models (= global + the weighted mean of the decoded updates).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from flwr.app import RecordDict
from torch import nn

from .base import ClientSide, SqueezeStrategy
from .state import load_array_list, save_array_list
from .tensors import Arrays, flatten, keyed, model_arrays, numel, unflatten


class UpdateStrategy(SqueezeStrategy):
    """decode_up = the model sent this round + the update `decode_update` reads."""

    def decode_update(self, server_round: int, node_id: int, content: RecordDict,
                      size: int) -> np.ndarray:
        """The flat float32 update (`size` entries) a reply carries."""
        raise NotImplementedError

    def decode_up(self, server_round: int, node_id: int, content: RecordDict) -> Arrays:
        update = self.decode_update(server_round, node_id, content, numel(self.shapes))
        model = np.add(flatten(list(self.round_arrays.values())), update, dtype=np.float32)
        return keyed(self.keys, unflatten(model, self.shapes))


class UpdateClient(ClientSide):
    """Computes the update and keeps the error memory (config field `error_feedback`)."""

    #: the context.state record of the error memory
    error_record: ClassVar[str]

    def __init__(self, method) -> None:
        super().__init__(method)
        self._received = np.zeros(0, dtype=np.float32)

    def receive(self, content: RecordDict, state: RecordDict, model: nn.Module) -> nn.Module:
        model = super().receive(content, state, model)
        self._received = flatten(list(model_arrays(model).values()))
        return model

    def update(self, model: nn.Module, state: RecordDict) -> np.ndarray:
        """local - received, plus the error memory when error feedback is on."""
        update = np.subtract(flatten(list(model_arrays(model).values())), self._received,
                             dtype=np.float32)
        if self.method.config.error_feedback:
            saved = load_array_list(state, self.error_record)
            if saved is not None and saved[0][0].shape == update.shape:
                update = np.add(update, saved[0][0], dtype=np.float32)
        return update

    def keep_remainder(self, state: RecordDict, update: np.ndarray,
                       delivered: np.ndarray) -> None:
        """Store update - delivered (dense, what the server decodes) as the error memory."""
        if self.method.config.error_feedback:
            save_array_list(state, self.error_record,
                            [np.subtract(update, delivered, dtype=np.float32)])

    def metrics(self, model: nn.Module, state: RecordDict) -> dict[str, float]:
        saved = load_array_list(state, self.error_record)
        return {"error-norm": float(np.linalg.norm(saved[0][0])) if saved is not None else 0.0}
