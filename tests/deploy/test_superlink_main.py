"""The SuperLink entry point: a changed Flower internal stops it, or with `--fallback` costs
only the patch it breaks, with one warning naming it."""

from __future__ import annotations

import sys

import pytest

from fedsqueeze.deploy.accelerated import flower_internals as fi
from fedsqueeze.deploy.accelerated import superlink_main


def _broken() -> None:
    raise fi.FlowerInternalsError("Flower 1.39.0: something has no attribute 'x'")


@pytest.fixture
def started(monkeypatch):
    import flwr.superlink.cli as cli

    calls: list[list[str]] = []
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    monkeypatch.setattr(superlink_main, "import_and_freeze", lambda name: None)
    monkeypatch.setattr(cli, "flower_superlink", lambda: calls.append(list(sys.argv)))
    monkeypatch.setattr(superlink_main, "patch_superlink_control_middleware", lambda: None)
    monkeypatch.setattr(superlink_main, "patch_superlink_rings", _broken)
    return calls


def test_a_broken_patch_stops_the_superlink_without_fallback(started):
    with pytest.raises(fi.FlowerInternalsError, match="no attribute 'x'"):
        superlink_main.main(["--", "--insecure"])
    assert started == []


def test_with_fallback_only_the_broken_patch_is_skipped_and_named(started, capsys):
    superlink_main.main(["--fallback", "--", "--insecure"])
    assert started == [["flower-superlink", "--insecure"]]
    warnings = capsys.readouterr().err.strip().splitlines()
    assert warnings == ["fedsqueeze: WARNING: the SuperLink rings no doorbells: Flower 1.39.0: "
                        "something has no attribute 'x'"]
