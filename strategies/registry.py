"""Methods registered by name: the only way `server/` and `client/` find a method.

Every module in `fedsqueeze.strategies.methods` is imported on first use (discovery: adding a
method is adding its module), which runs its `@register` decorator.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from .settings import ConfigError, MethodConfig

if TYPE_CHECKING:
    from .base import Method

M = TypeVar("M", bound="type[Method]")

_METHODS: dict[str, type[Method]] = {}
_DISCOVERED = False


def register(name: str) -> Callable[[M], M]:
    """Class decorator: `@register("fedavg")` makes `method = "fedavg"` select the class and
    gives its config dataclass the key prefix `fedavg.`."""

    def decorate(cls: M) -> M:
        if name in _METHODS and _METHODS[name] is not cls:
            raise ValueError(f"method name {name!r} is registered twice")
        config = cls.Config
        if config is not MethodConfig:
            if "prefix" in vars(config) and config.prefix != name:
                raise ValueError(f"{config.__name__} already belongs to method "
                                 f"{config.prefix!r}; give {name!r} a config class of its own")
            config.prefix = name
        cls.name = name
        _METHODS[name] = cls
        return cls

    return decorate


def _discover() -> None:
    global _DISCOVERED
    if _DISCOVERED:
        return
    from . import methods

    for info in sorted(pkgutil.iter_modules(methods.__path__), key=lambda i: i.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{methods.__name__}.{info.name}")
    _DISCOVERED = True


def method_names() -> list[str]:
    _discover()
    return sorted(_METHODS)


def get_method(name: str) -> type[Method]:
    """The method class registered as `name`; a ConfigError lists the valid names."""
    _discover()
    try:
        return _METHODS[name]
    except KeyError:
        raise ConfigError(
            f"run-config 'method' = {name!r} is invalid: unknown method, valid: "
            + ", ".join(sorted(_METHODS))
        ) from None
