"""`fedsqueeze methods`: the registered methods and channels, each with its run-config keys,
defaults and what they do (the comments of the app's `[tool.flwr.app.config]`)."""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

from fedsqueeze.strategies.channel import channel_names, get_channel
from fedsqueeze.strategies.registry import get_method, method_names

_KEY_LINE = re.compile(r'^\s*"?(?P<key>[A-Za-z0-9_.-]+)"?\s*=\s*[^#]*?(#\s*(?P<doc>.*))?$')


def documented_keys(app_dir: Path) -> dict[str, tuple[object, str]]:
    """Run-config key -> (default, its comment) of the app's `[tool.flwr.app.config]`."""
    text = (app_dir / "pyproject.toml").read_text()
    defaults = tomllib.loads(text)["tool"]["flwr"]["app"]["config"]
    section = text.split("[tool.flwr.app.config]", 1)[1].split("\n[", 1)[0]
    docs = {m["key"]: (m["doc"] or "").strip() for line in section.splitlines()
            if (m := _KEY_LINE.match(line))}
    return {key: (value, docs.get(key, "")) for key, value in defaults.items()}


def _summary(cls: type, width: int) -> str:
    """The first sentence of the class's module docstring (at most about `width` long)."""
    doc = " ".join((sys.modules[cls.__module__].__doc__ or cls.__doc__ or "").split())
    first = re.split(r"(?<!\bal)\.\s", doc, maxsplit=1)[0].rstrip(".")
    return first if len(first) <= width else first[:width].rsplit(" ", 1)[0] + " ..."


def _value(value: object) -> str:
    return f'"{value}"' if isinstance(value, str) else str(value).lower() \
        if isinstance(value, bool) else str(value)


def _entry(name: str, cls: type, keys: dict[str, tuple[object, str]], brief: bool
           ) -> list[str]:
    lines = [f"  {name}: {_summary(cls, 90 if brief else 150)}"]
    for key, (default, doc) in ({} if brief else keys).items():
        if key.startswith(f"{name}."):
            lines.append(f"      {key} = {_value(default)}" + (f"    {doc}" if doc else ""))
    return lines


def catalog(app_dir: Path, only: str = "", brief: bool = False) -> str:
    """The methods and channels (or only the one named `only`) with their keys (`brief`:
    without)."""
    keys = documented_keys(app_dir)
    methods = [n for n in method_names() if not only or n == only]
    channels = [n for n in channel_names() if not only or n == only]
    if only and not methods and not channels:
        raise KeyError(only)
    lines: list[str] = []
    if methods:
        lines.append('methods (run config method = "NAME"; its keys NAME.*):')
        for name in methods:
            lines += _entry(name, get_method(name), keys, brief)
    if channels:
        lines.append('channels (run config uplink = "NAME" / downlink = "NAME"; its keys '
                     "NAME.*; in Python, constructor arguments):")
        for name in channels:
            lines += _entry(name, get_channel(name), keys, brief)
    return "\n".join(lines)
