"""Check run-config overrides before submitting: known keys, valid values.

Flower rejects keys not declared in `[tool.flwr.app.config]`; we say so earlier, with the close
matches, and validate the values the same way the ServerApp will, so a bad value never starts
processes.
"""

from __future__ import annotations

import difflib
import tomllib
from pathlib import Path

from flwr.common.config import parse_config_args

from fedsqueeze.strategies.build import run_channels
from fedsqueeze.strategies.registry import get_method
from fedsqueeze.strategies.settings import ConfigError, RunSettings, UserValue, names_in
from fedsqueeze.strategies.sinks import check_sinks
from fedsqueeze.strategies.training import loss_named, metric_named, optimizer_named


def find_app_dir(explicit: str | None = None) -> Path:
    """The Flower app directory (the one whose pyproject.toml has [tool.flwr.app])."""
    candidates = [Path(explicit)] if explicit else [Path(__file__).resolve().parents[1],
                                                    Path.cwd()]
    for candidate in candidates:
        pyproject = candidate / "pyproject.toml"
        if pyproject.is_file() and "flwr" in tomllib.loads(pyproject.read_text()).get("tool", {}):
            return candidate.resolve()
    raise ConfigError("cannot find the fedsqueeze Flower app (a pyproject.toml with "
                      "[tool.flwr.app]); pass --app DIR")


def is_fedsqueeze_app(app_dir: Path) -> bool:
    """Whether the app's ServerApp is fedsqueeze's (its run config, rows and results)."""
    data = tomllib.loads((app_dir / "pyproject.toml").read_text())
    components = data["tool"]["flwr"]["app"].get("components", {})
    return str(components.get("serverapp", "")).startswith("fedsqueeze.")


def declared_config(app_dir: Path) -> dict[str, UserValue]:
    data = tomllib.loads((app_dir / "pyproject.toml").read_text())
    return dict(data["tool"]["flwr"]["app"]["config"])


def parse_overrides(text: list[str] | None) -> dict[str, UserValue]:
    if not text:
        return {}
    try:
        return dict(parse_config_args(text))
    except Exception as err:  # Flower raises several kinds for bad TOML
        raise ConfigError(f"cannot parse --run-config {' '.join(text)!r}: {err}") from None


def checked_run_config(app_dir: Path, overrides: dict[str, UserValue]) -> dict[str, UserValue]:
    """Declared defaults merged with the overrides, after checking keys and values."""
    declared = declared_config(app_dir)
    for key in overrides:
        if key not in declared:
            close = difflib.get_close_matches(key, declared, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"unknown run-config key '{key}'.{hint} Valid keys: "
                              + ", ".join(sorted(declared)))
    merged = {**declared, **overrides}
    settings = RunSettings.from_run_config(merged)
    run_channels(get_method(settings.method)(settings, merged), merged)
    loss_named(settings.loss)  # the names exist (after the plugins registered theirs)
    optimizer_named(settings.optimizer)
    for name in names_in(settings.metrics):
        metric_named(name)
    check_sinks(names_in(settings.sinks))
    return merged
