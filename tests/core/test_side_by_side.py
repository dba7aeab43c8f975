"""`fedsqueeze side-by-side`: every cell is the one its setting's table.csv holds; runs
matched by label; twins without catch-up become the downlink table."""

from __future__ import annotations

import pytest

from fedsqueeze.deploy.cli import main
from fedsqueeze.server.compare import compare_rows, markdown, write_csv
from fedsqueeze.server.side_by_side import side_by_side


def _rows(accuracies, up, down):
    return [{"round": t, "accuracy": a, "message_up": up, "message_down": down,
             "payload_up": up, "payload_down": down, "seconds": 1.0}
            for t, a in enumerate(accuracies, start=1)]


def _write(folder, runs, title):
    folder.mkdir()
    rows = compare_rows(runs)
    (folder / "table.md").write_text(markdown(rows, f"fedsqueeze compare {title}"))
    write_csv(rows, folder / "table.csv")
    return folder


def test_cells_come_from_each_settings_table_and_twins_form_the_downlink_table(tmp_path):
    full = _write(tmp_path / "full", [
        ("fedavg", {}, _rows([0.5, 0.8], 1_000_000, 1_000_000)),
        ("topk", {}, _rows([0.8, 0.8], 10_000, 20_000)),
    ], "full (simulation): 10 clients")
    partial = _write(tmp_path / "partial", [
        ("fedavg", {}, _rows([0.5, 0.7], 500_000, 500_000)),
        ("topk", {}, _rows([0.6, 0.7], 10_000, 30_000)),
        ("topk (no catch-up)", {}, _rows([0.6, 0.7], 10_000, 400_000)),
        ("qsgd", {}, _rows([0.1, 0.2], 1, 1)),
    ], "partial (simulation): half per round")
    text = side_by_side([full, partial])
    lines = text.splitlines()
    assert "- **full** (fedavg is the reference): full (simulation): 10 clients" in lines
    # full: fedavg reaches 0.79 at round 2 (4 MB); topk at round 1 (0.03 MB): 133.3x
    assert "| fedavg | 0.8000 | 4.00 | 1.0x | 0.7000 | 2.00 | 1.0x |" in lines
    assert "| topk | 0.8000 | 0.03 | 133.3x | 0.7000 | 0.08 | 25.0x |" in lines
    assert "| qsgd |  |  |  | 0.2000 | - | - |" in lines  # absent from full; never reached
    assert not any(line.startswith("| topk (no catch-up)") for line in lines)
    assert "| topk | 0.06 | 0.80 |" in lines  # partial's downlink, with and without catch-up
    assert "full: down MB" not in text  # a setting without twins has no downlink columns


def test_a_folder_without_a_comparison_is_a_clear_error(tmp_path, capsys):
    assert main(["side-by-side", str(tmp_path)]) == 2
    assert "no table.csv and table.md" in capsys.readouterr().err


def test_the_command_prints_and_writes_the_markdown(tmp_path, capsys):
    folder = _write(tmp_path / "one", [("fedavg", {}, _rows([0.9], 5, 5))], "one: x")
    assert main(["side-by-side", str(folder), "--out", str(tmp_path / "h.md")]) == 0
    assert capsys.readouterr().out.strip() == (tmp_path / "h.md").read_text().strip()
    with pytest.raises(SystemExit):
        main(["side-by-side"])
