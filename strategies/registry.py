"""Methods registered by name: the only way `server/` and `client/` find a method."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from .settings import ConfigError

if TYPE_CHECKING:
    from .base import Method

M = TypeVar("M", bound="type[Method]")

_METHODS: dict[str, type[Method]] = {}


def register(name: str) -> Callable[[M], M]:
    """Class decorator: `@register("fedavg")` makes `method = "fedavg"` select the class."""

    def decorate(cls: M) -> M:
        if name in _METHODS and _METHODS[name] is not cls:
            raise ValueError(f"method name {name!r} is registered twice")
        cls.name = name
        _METHODS[name] = cls
        return cls

    return decorate


def _load_builtin_methods() -> None:
    # Importing the package's method modules runs their @register decorators.
    from . import methods  # noqa: F401  (import for side effect)


def method_names() -> list[str]:
    _load_builtin_methods()
    return sorted(_METHODS)


def get_method(name: str) -> type[Method]:
    """The method class registered as `name`; a ConfigError lists the valid names."""
    _load_builtin_methods()
    try:
        return _METHODS[name]
    except KeyError:
        raise ConfigError(
            f"run-config 'method' = {name!r} is invalid: unknown method, valid: "
            + ", ".join(sorted(_METHODS))
        ) from None
