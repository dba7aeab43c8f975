"""FedAvg (McMahan et al., 2017): the baseline. Flower's own FedAvg aggregation and sampling
rule, with the model carried both ways as one dense-codec payload (fp32 by default)."""

from __future__ import annotations

import dataclasses

from flwr.app import ArrayRecord, ConfigRecord, RecordDict
from torch import nn

from fedsqueeze.codecs import get_codec

from .base import ClientSide, Method, SqueezeStrategy
from .payload import PAYLOAD_RECORD, pack, unpack
from .registry import register
from .settings import check_choice
from .tensors import (
    expected_shapes,
    from_arrayrecord,
    load_arrays,
    model_arrays,
    to_arrayrecord,
    travelling_keys,
)

DTYPES = ("fp32", "fp16", "bf16")


@dataclasses.dataclass(frozen=True)
class FedAvgConfig:
    dtype: str = "fp32"  # value format on the wire, both directions

    def __post_init__(self) -> None:
        check_choice("fedavg.dtype", self.dtype, DTYPES)


class DenseModelCodec:
    """The whole model as one dense payload, in canonical order."""

    def __init__(self, dtype: str) -> None:
        self.codec = get_codec("dense")
        self.dtype = dtype

    @property
    def stype(self) -> str:
        return self.codec.stype

    def encode(self, arrays: dict) -> RecordDict:
        payload = self.codec.encode(list(arrays.values()), dtype=self.dtype)
        return RecordDict({PAYLOAD_RECORD: pack(self.codec.stype, payload)})

    def decode(self, content: RecordDict, keys: list[str], shapes: list[tuple[int, ...]]
               ) -> dict:
        arrays = self.codec.decode(unpack(content, self.codec.stype), shapes)
        return dict(zip(keys, arrays))


class FedAvgStrategy(SqueezeStrategy):
    def __init__(self, method: FedAvgMethod, model: nn.Module) -> None:
        super().__init__(method, model)
        self.model_codec = DenseModelCodec(method.config.dtype)

    def encode_down(self, server_round: int, node_id: int, arrays: ArrayRecord,
                    config: ConfigRecord) -> RecordDict:
        content = self.model_codec.encode(from_arrayrecord(arrays))
        content["config"] = config
        return content

    def decode_up(self, server_round: int, node_id: int, content: RecordDict) -> ArrayRecord:
        return to_arrayrecord(self.model_codec.decode(content, self.keys, self.shapes))


class FedAvgClient(ClientSide):
    def __init__(self, method: FedAvgMethod) -> None:
        super().__init__(method)
        self.model_codec = DenseModelCodec(method.config.dtype)

    def receive(self, content: RecordDict, state: RecordDict, model: nn.Module) -> nn.Module:
        arrays = self.model_codec.decode(content, travelling_keys(model), expected_shapes(model))
        load_arrays(model, list(arrays.values()))
        return model

    def send(self, model: nn.Module, state: RecordDict) -> RecordDict:
        return self.model_codec.encode(model_arrays(model))


@register("fedavg")
class FedAvgMethod(Method):
    Config = FedAvgConfig

    def server(self, model: nn.Module) -> SqueezeStrategy:
        return FedAvgStrategy(self, model)

    def client(self) -> ClientSide:
        return FedAvgClient(self)
