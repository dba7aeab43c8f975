"""pFedPara (Hyeon-Woo et al., ICLR 2022): personalised FedPara, W = W1 * (W2 + 1).

The method requires `model-transform = "pfedpara"` (options: the `fedpara.*` keys). W1's
factors and every other tensor (biases, norms, layers left standard) are global: they travel
both ways (as the run's channels code them; dense fp32 by default) and are averaged. W2's
factors (`models.fedpara.LOCAL_FACTORS`) are the client's own: they stay in `context.state`
and never leave it; a client's first round starts them from the seeded init, the same on every
client. Biases are global (the paper's suggestion): they are shared by every client's layer,
and a local bias would let W1 stay generic while the bias alone personalises, which is not
what the paper studies.

The server's model holds W2 at its init (it never sees a client's W2), so its central
accuracy is that of an untrained personalisation; the figure that counts is the local
evaluation of each client's own model (`evaluation`: the global W1 with its own W2) on its
local test split (`accuracy_local`, mean and min).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from torch import nn

from fedsqueeze.models.fedpara import is_local_factor
from fedsqueeze.strategies.base import ARRAYS, ClientSide, Method, Tagged, plain_arrays
from fedsqueeze.strategies.registry import register
from fedsqueeze.strategies.state import load_array_list, save_array_list
from fedsqueeze.strategies.tensors import Arrays, model_arrays, to_arrayrecord, travelling_keys

STATE = "pfedpara.local"  # context.state: this client's W2 factors (canonical order)


def split_keys(model: nn.Module) -> tuple[list[str], list[str]]:
    """(global keys, local keys) of the travelling tensors, canonical order."""
    keys = travelling_keys(model)
    return [k for k in keys if not is_local_factor(k)], [k for k in keys if is_local_factor(k)]


class PFedParaStrategy(Tagged, FedAvg):
    """Flower's FedAvg over the global tensors; the aggregate is completed with the server's
    own (initial) W2, bit for bit."""

    method_name = "pfedpara"

    def __init__(self, model: nn.Module, **options) -> None:
        super().__init__(**options)
        self.keys = travelling_keys(model)
        self.global_keys, local_keys = split_keys(model)
        if not local_keys:
            raise ValueError("pfedpara: the model has no FedPara layer (fedpara.layers?)")
        arrays = model_arrays(model)
        self.server_local = OrderedDict((k, arrays[k]) for k in local_keys)

    def _global(self, arrays: ArrayRecord) -> ArrayRecord:
        return ArrayRecord({k: arrays[k] for k in self.global_keys})

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        return super().configure_train(server_round, self._global(arrays), config, grid)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return super().configure_evaluate(server_round, self._global(arrays), config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        arrays, metrics = super().aggregate_train(server_round, replies)
        if arrays is None:
            return arrays, metrics
        local = self.server_local
        return ArrayRecord({k: Array(np.ascontiguousarray(local[k])) if k in local
                            else arrays[k] for k in self.keys}), metrics


class PFedParaClient(ClientSide):
    """Completes the global tensors of a message with its own W2 from `context.state`."""

    def _personal(self, content: RecordDict, state: RecordDict) -> Arrays:
        structure = self.method.structure()
        _, local_keys = split_keys(structure)
        shared = plain_arrays(content)
        saved = load_array_list(state, STATE)
        own = model_arrays(structure)  # the seeded init until this client has trained
        if saved is not None:
            own.update(zip(local_keys, saved[0]))
        return OrderedDict((k, shared[k] if k in shared else own[k]) for k in own)

    def receive(self, exchange: str, content: RecordDict, state: RecordDict) -> Arrays:
        return self._personal(content, state)

    def evaluation(self, content: RecordDict, state: RecordDict) -> dict[str, Arrays]:
        return {ARRAYS: self._personal(content, state)}

    def send(self, exchange: str, arrays: Arrays, state: RecordDict) -> RecordDict:
        global_keys, local_keys = split_keys(self.method.structure())
        save_array_list(state, STATE, [np.asarray(arrays[k]) for k in local_keys])
        return RecordDict({ARRAYS: to_arrayrecord(OrderedDict((k, arrays[k])
                                                              for k in global_keys))})


@register("pfedpara")
class PFedPara(Method):
    Client = PFedParaClient
    model_transform = "pfedpara"
    plain = True
    partial = True

    def strategy(self, model: nn.Module, **options) -> PFedParaStrategy:
        return PFedParaStrategy(model, **options)
