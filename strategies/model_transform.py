"""Model transforms: a change of the model that every method trains without knowing it
(FedPara's low-rank Hadamard layers, `models/fedpara.py`).

Selected by run config `model-transform` ("", "fedpara" or "pfedpara"), or by a method that
needs one (`Method.model_transform`: the fedpara and pfedpara methods); the options are the
`fedpara.*` keys, whatever the method. The transform runs inside `build_run_model`, so the
server and every client build the same transformed model from the seed, and everything that
travels (state-dict tensors) is the factors, never the synthesised weights.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

from torch import nn

from fedsqueeze.models.fedpara import LAYER_CHOICES, fedpara_transform

from .settings import ConfigError, MethodConfig, RunSettings, UserValue, from_run_config

TRANSFORMS = ("", "fedpara", "pfedpara")


@dataclasses.dataclass(frozen=True)
class FedParaConfig(MethodConfig):
    """The `fedpara.*` keys: the transform's options."""

    prefix: ClassVar[str] = "fedpara"
    gamma: float = 0.5        # rank rule: R = ceil((1 - gamma) r_min + gamma r_max)
    layers: str = "auto"      # auto (conv if any, else linear), conv, linear or all
    tanh: bool = False        # W = tanh(W1) * tanh(W2)

    def __post_init__(self) -> None:
        self.check({"gamma": (lambda v: 0 <= v <= 1, "must be in [0, 1]")})
        self.check_choice("layers", LAYER_CHOICES)


@dataclasses.dataclass(frozen=True)
class ModelTransform:
    name: str                 # fedpara, or pfedpara (W = W1 * (W2 + 1), W2 local)
    options: FedParaConfig

    def apply(self, model: nn.Module) -> nn.Module:
        o = self.options
        return fedpara_transform(model, o.gamma, o.layers, o.tanh,
                                 personal=self.name == "pfedpara")

    def describe(self) -> dict[str, Any]:
        o = self.options
        return {"name": self.name, "gamma": o.gamma, "layers": o.layers, "tanh": o.tanh}


def model_transform_of(settings: RunSettings, run_config: Mapping[str, UserValue],
                       required: str = "") -> ModelTransform | None:
    """The run's transform: run config `model-transform`, or the one the method requires
    (a different explicit choice is an error); None for none."""
    chosen = settings.model_transform
    if required and chosen and chosen != required:
        raise ConfigError(f"run-config 'model-transform' = {chosen!r} is invalid: method "
                          f"{settings.method!r} trains the {required!r} model")
    if chosen == "pfedpara" and required != "pfedpara":
        raise ConfigError(f"run-config 'model-transform' = 'pfedpara' cannot combine with "
                          f"method {settings.method!r}: only method 'pfedpara' keeps the local "
                          "factors on the clients (any other would send them); use "
                          "model-transform = 'fedpara'")
    name = chosen or required
    if not name:
        return None
    options = from_run_config(FedParaConfig, run_config, prefix="fedpara")
    return ModelTransform(name, options)
