"""Model registry: models are registered by name and built through :func:`build_model`.

A registered factory has the signature ``factory(num_classes, in_shape) -> nn.Module`` where
``in_shape`` is ``(C, H, W)``. Factories must reject input shapes they cannot take by raising
:class:`ModelError` at build time (never at the first forward).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

__all__ = [
    "ModelError",
    "register_model",
    "build_model",
    "model_names",
    "count_parameters",
    "trace_spatial",
    "INITS",
]

ModelFactory = Callable[[int, tuple[int, int, int]], nn.Module]

_REGISTRY: dict[str, ModelFactory] = {}

INITS = ("default", "glorot")


class ModelError(ValueError):
    """A model cannot be built as asked (unknown name, unusable input shape, unknown init...)."""


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator registering ``factory(num_classes, in_shape) -> nn.Module`` under ``name``."""
    if not isinstance(name, str) or not name:
        raise ModelError(f"model name must be a non-empty string, got {name!r}")
    if name in _REGISTRY:
        raise ModelError(f"model {name!r} is already registered")

    def enter(factory: ModelFactory) -> ModelFactory:
        _REGISTRY[name] = factory
        return factory

    return enter


def model_names() -> list[str]:
    """Sorted names of every registered model."""
    return sorted(_REGISTRY)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _check_in_shape(in_shape: object) -> tuple[int, int, int]:
    try:
        dims = tuple(in_shape)  # type: ignore[arg-type]
    except TypeError:
        raise ModelError(f"in_shape must be a (C, H, W) tuple, got {in_shape!r}") from None
    if len(dims) != 3 or not all(isinstance(d, int) and not isinstance(d, bool) for d in dims):
        raise ModelError(f"in_shape must be a (C, H, W) tuple of 3 ints, got {in_shape!r}")
    if any(d < 1 for d in dims):
        raise ModelError(f"in_shape dimensions must all be >= 1, got {in_shape!r}")
    return dims  # type: ignore[return-value]


def trace_spatial(
    name: str, in_shape: tuple[int, int, int], layers: Iterable[tuple[str, int, int, int]]
) -> tuple[int, int]:
    """Follow (H, W) through ``(label, kernel, stride, padding)`` conv/pool layers.

    Returns the final (H, W); raises ModelError naming the layer where the map would vanish.
    """
    _, h, w = in_shape
    for label, k, s, p in layers:
        nh, nw = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        if h + 2 * p < k or w + 2 * p < k or nh < 1 or nw < 1:
            raise ModelError(
                f"model {name!r} cannot take input shape {tuple(in_shape)}: "
                f"the feature map is {h}x{w} at {label} (kernel {k}, stride {s}, padding {p}), "
                "too small to continue"
            )
        h, w = nh, nw
    return h, w


def _glorot_(model: nn.Module) -> None:
    """Glorot/Xavier-uniform weights and zero biases for every Linear and Conv layer."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


def build_model(
    name: str, num_classes: int, in_shape: Sequence[int], init: str = "default"
) -> nn.Module:
    """Build the registered model ``name`` for ``num_classes`` classes and (C, H, W) inputs.

    ``init="default"`` keeps PyTorch's (or torchvision's) initialisation; ``init="glorot"``
    re-initialises every Linear/Conv with Xavier-uniform weights and zero biases.
    Raises ModelError for an unknown name, an unusable shape or class count, or unknown init.
    """
    factory = _REGISTRY.get(name)
    if factory is None:
        raise ModelError(f"unknown model {name!r}; valid names: {', '.join(model_names())}")
    if init not in INITS:
        raise ModelError(f"unknown init {init!r}; valid inits: {', '.join(INITS)}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ModelError(f"num_classes must be a positive int, got {num_classes!r}")
    shape = _check_in_shape(in_shape)
    model = factory(num_classes, shape)
    if init == "glorot":
        with torch.no_grad():
            _glorot_(model)
    return model
