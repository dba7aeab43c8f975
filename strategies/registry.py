"""Methods and channels registered by name: the only way `server/` and `client/` find them.

Every module of a registry's package (`fedsqueeze.strategies.methods`, `...channels`) is
imported on first use (discovery: adding a method or a channel is adding its module), which
runs its registering decorator.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import TYPE_CHECKING, Generic, TypeVar

from .settings import ConfigError, MethodConfig

if TYPE_CHECKING:
    from .base import Method

T = TypeVar("T")
M = TypeVar("M", bound="type[Method]")


class Registry(Generic[T]):
    """Classes by name, found by importing every module of one package."""

    def __init__(self, kind: str, package: str, asked_as: str) -> None:
        """`asked_as`: what names a class where users ask for one (in `find`'s errors)."""
        self.kind, self.package, self.asked_as = kind, package, asked_as
        self._classes: dict[str, T] = {}
        self._discovered = False

    def registering(self, name: str, name_class: Callable[[T, str], None]) -> Callable[[T], T]:
        """A class decorator registering its class as `name`, after `name_class(cls, name)`
        has named the class (and refused it, raising, if it cannot be: then nothing is
        registered)."""
        def decorate(cls: T) -> T:
            if name in self._classes and self._classes[name] is not cls:
                raise ValueError(f"{self.kind} name {name!r} is registered twice")
            name_class(cls, name)
            self._classes[name] = cls
            return cls
        return decorate

    def _discover(self) -> None:
        if self._discovered:
            return
        package = importlib.import_module(self.package)
        for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
            if not info.name.startswith("_"):
                importlib.import_module(f"{self.package}.{info.name}")
        self._discovered = True

    def names(self) -> list[str]:
        self._discover()
        return sorted(self._classes)

    def get(self, name: str) -> T | None:
        self._discover()
        return self._classes.get(name)

    def find(self, name: str, where: str | None = None) -> T:
        """The class registered as `name`; a ConfigError names where it was asked for
        (`where`, else `asked_as`) and lists the valid names."""
        found = self.get(name)
        if found is None:
            raise ConfigError(f"{where or self.asked_as} = {name!r} is invalid: unknown "
                              f"{self.kind}, valid: " + ", ".join(self.names()))
        return found


METHODS: Registry[type[Method]] = Registry("method", "fedsqueeze.strategies.methods",
                                           "run-config 'method'")


def register(name: str) -> Callable[[M], M]:
    """Class decorator: `@register("fedavg")` makes `method = "fedavg"` select the class and
    gives its config dataclass the key prefix `fedavg.`."""
    return METHODS.registering(name, _name_method)


def _name_method(cls: type[Method], name: str) -> None:
    config = cls.Config
    if config is not MethodConfig and "prefix" in vars(config) and config.prefix != name:
        raise ValueError(f"{config.__name__} already belongs to method {config.prefix!r}; "
                         f"give {name!r} a config class of its own")
    if config is not MethodConfig:
        config.prefix = name
    cls.name = name


method_names = METHODS.names  # the registered methods' names, sorted
get_method = METHODS.find      # the class of a method's name; a ConfigError lists the valid
