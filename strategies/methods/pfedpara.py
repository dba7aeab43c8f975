"""pFedPara (Hyeon-Woo et al., ICLR 2022): personalised FedPara, W = W1 * (W2 + 1).

The method requires `model-transform = "pfedpara"` (options: the `fedpara.*` keys). W1's
factors and every other tensor (biases, norms, layers left standard) are global: they travel
both ways (dense fp32) and are averaged. W2's factors (`models.fedpara.LOCAL_FACTORS`) are
the client's own: they stay in `context.state` and never leave it; a client's first round
starts them from the seeded init, the same on every client. Biases are global (the paper's
suggestion): they are shared by every client's layer, and a local bias would let W1 stay
generic while the bias alone personalises, which is not what the paper studies.

The server's model holds W2 at its init (it never sees a client's W2), so its central
accuracy is that of an untrained personalisation; the figure that counts is the local
evaluation of each client's own model (`evaluation_model`: the global W1 with its own W2) on
its local test split (`accuracy_local`, mean and min).
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from torch import nn

from fedsqueeze.models.fedpara import is_local_factor
from fedsqueeze.strategies.base import ClientSide, Method, SqueezeStrategy
from fedsqueeze.strategies.registry import register
from fedsqueeze.strategies.state import load_array_list, save_array_list
from fedsqueeze.strategies.tensors import (
    Arrays,
    expected_shapes,
    from_arrayrecord,
    keyed,
    load_arrays,
    model_arrays,
    to_arrayrecord,
    travelling_keys,
)

STATE = "pfedpara.local"  # context.state: this client's W2 factors (canonical order)


def split_keys(model: nn.Module) -> tuple[list[str], list[tuple[int, ...]], list[str]]:
    """(global keys, their shapes, local keys) of the travelling tensors, canonical order."""
    keys, shapes = travelling_keys(model), expected_shapes(model)
    shared = [(k, s) for k, s in zip(keys, shapes) if not is_local_factor(k)]
    return [k for k, _ in shared], [s for _, s in shared], [k for k in keys if
                                                             is_local_factor(k)]


class PFedParaStrategy(SqueezeStrategy):
    """Sends and receives the global tensors only; a decoded reply is completed with the
    server's own (initial) W2, which the aggregate keeps."""

    def __init__(self, method: PFedPara, model: nn.Module) -> None:
        super().__init__(method, model)
        self.global_keys, self.global_shapes, self.local_keys = split_keys(model)
        if not self.local_keys:
            raise ValueError("pfedpara: the model has no FedPara layer (fedpara.layers?)")
        self.server_local = OrderedDict((k, v) for k, v in self.round_arrays.items()
                                        if k in self.local_keys)

    def _global(self, arrays: Arrays) -> Arrays:
        return OrderedDict((k, arrays[k]) for k in self.global_keys)

    def encode_down(self, server_round: int, node_id: int, arrays: Arrays) -> RecordDict:
        return self.model_codec.encode(self._global(arrays))

    def encode_evaluate(self, server_round: int, node_id: int, arrays: Arrays) -> RecordDict:
        return self.model_codec.encode(self._global(arrays))

    def decode_up(self, server_round: int, node_id: int, content: RecordDict) -> Arrays:
        shared = self.model_codec.decode(content, self.global_keys, self.global_shapes)
        return keyed(self.keys, [shared[k] if k in shared else self.server_local[k]
                                 for k in self.keys])

    def aggregate_decoded(self, server_round: int, replies: list[Message]
                          ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """FedAvg of the global tensors; W2 stays the server's init, bit for bit."""
        arrays, metrics = super().aggregate_decoded(server_round, replies)
        if arrays is None:
            return arrays, metrics
        merged = from_arrayrecord(arrays)
        merged.update(self.server_local)
        return to_arrayrecord(merged), metrics


class PFedParaClient(ClientSide):
    """Loads the global tensors of a message and its own W2 from `context.state`."""

    def _personal(self, content: RecordDict, state: RecordDict, model: nn.Module) -> nn.Module:
        global_keys, global_shapes, local_keys = split_keys(model)
        shared = self.model_codec.decode(content, global_keys, global_shapes)
        saved = load_array_list(state, STATE)
        own = model_arrays(model)  # the seeded init until this client has trained
        if saved is not None:
            own.update(zip(local_keys, saved[0]))
        load_arrays(model, [shared[k] if k in shared else own[k] for k in own])
        return model

    def receive(self, content: RecordDict, state: RecordDict, model: nn.Module) -> nn.Module:
        return self._personal(content, state, model)

    def evaluation_model(self, content: RecordDict, state: RecordDict, model: nn.Module
                         ) -> nn.Module:
        return self._personal(content, state, model)

    def send(self, model: nn.Module, state: RecordDict) -> RecordDict:
        global_keys, _, local_keys = split_keys(model)
        arrays = model_arrays(model)
        save_array_list(state, STATE, [np.asarray(arrays[k]) for k in local_keys])
        return self.model_codec.encode(OrderedDict((k, arrays[k]) for k in global_keys))


@register("pfedpara")
class PFedPara(Method):
    Strategy = PFedParaStrategy
    Client = PFedParaClient
    model_transform = "pfedpara"
