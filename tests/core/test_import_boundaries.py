"""The layers of docs/architecture.md ("What may import what"), checked on every module's
imports: a folder imports only the folders below it, never one above."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# each folder: the fedsqueeze folders it may import (docs/architecture.md says the same)
ALLOWED = {
    "codecs": set(),
    "models": set(),
    "data": set(),
    "strategies": {"codecs", "models", "data"},
    "server": {"strategies", "models", "data"},
    "client": {"strategies", "models", "data"},
    "deploy": {"server", "client", "strategies", "codecs", "models", "data"},
}


def imported_folders(path: Path) -> set[str]:
    """The fedsqueeze folders a module imports, relative imports resolved."""
    package = ["fedsqueeze", *path.parent.relative_to(ROOT).parts]
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            names.append(".".join([*base, *([node.module] if node.module else [])]))
    return {n.split(".")[1] for n in names if n.startswith("fedsqueeze.") and "." in n}


@pytest.mark.parametrize("folder", sorted(ALLOWED))
def test_a_folder_imports_only_the_layers_below_it(folder):
    wrong = {f"{path.relative_to(ROOT)} imports {other}"
             for path in (ROOT / folder).rglob("*.py")
             for other in imported_folders(path) - ALLOWED[folder] - {folder}}
    assert not wrong, "\n".join(sorted(wrong))


def test_the_rules_are_the_ones_the_architecture_page_states():
    page = (ROOT / "docs" / "architecture.md").read_text()
    assert "`tests/core/test_import_boundaries.py`" in page
    for folder, allowed in ALLOWED.items():
        line = f"- `{folder}/` imports " + (", ".join(f"`{a}/`" for a in sorted(allowed))
                                            if allowed else "nothing of fedsqueeze")
        assert line in page, line
