"""FedAvg (McMahan et al., 2017): the baseline. Flower's own FedAvg aggregation and sampling
rule, with the model carried both ways as one dense-codec payload (fp32 by default)."""

from __future__ import annotations

import dataclasses

from fedsqueeze.strategies.base import Method
from fedsqueeze.strategies.model_codec import MODEL_VALUES, DenseModelCodec
from fedsqueeze.strategies.registry import register
from fedsqueeze.strategies.settings import MethodConfig

DTYPES = MODEL_VALUES


@dataclasses.dataclass(frozen=True)
class FedAvgConfig(MethodConfig):
    dtype: str = "fp32"  # value format on the wire, both directions (fp*, bf16 or q1..q8)

    def __post_init__(self) -> None:
        self.check_choice("dtype", DTYPES)


@register("fedavg")
class FedAvg(Method):
    Config = FedAvgConfig

    def model_codec(self) -> DenseModelCodec:
        return DenseModelCodec(self.config.dtype)
