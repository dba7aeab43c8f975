"""`fedsqueeze tune`: points run on held-out local splits and are ranked by the global model's
mean held-out accuracy; bad grids and rows fail before anything runs."""

from __future__ import annotations

import re

import pytest

from fedsqueeze.deploy.compare import Preset
from fedsqueeze.deploy.tune import parse_grid, tune
from fedsqueeze.server.results import read_run
from fedsqueeze.strategies.settings import ConfigError

TINY = Preset("tiny", "3 clients iid fc2", clients=3, rounds=2,
              setting={"partitioner": "iid", "model": "fc2", "min-nodes": 2},
              runs=(("fedavg", {"method": "fedavg"}),
                    ("topk-ef-0.99", {"method": "fedavg", "uplink": "topk-ef"})))


def test_parse_grid_reads_toml_values_and_rejects_malformed_entries():
    assert parse_grid(["lr=0.1, 0.01", "topk-ef.values=\"fp16\",\"fp32\""]) == \
        {"lr": [0.1, 0.01], "topk-ef.values": ["fp16", "fp32"]}
    for bad in ("lr", "=0.1", "lr="):
        with pytest.raises(ConfigError, match="KEY=V1,V2"):
            parse_grid([bad])


@pytest.mark.parametrize(("row", "grid", "holdout", "match"), [
    ("nope", {"lr": [0.1]}, 0.1, "not a run of preset"),
    ("fedavg", {}, 0.1, "at least one --grid"),
    ("fedavg", {"lr": [0.1]}, 1.0, "--holdout"),
    ("fedavg", {"topk-ef.sparsity": [0.5, 7.0]}, 0.1, "sparsity"),
])
def test_bad_rows_grids_and_holdouts_fail_before_any_run(tmp_path, row, grid, holdout, match):
    with pytest.raises(ConfigError, match=match):
        tune(TINY, row, grid, rounds=2, holdout=holdout, out=tmp_path / "t", echo=lambda _: None)
    assert not (tmp_path / "t" / "runs").exists() or \
        not any((tmp_path / "t" / "runs").iterdir())


def test_points_are_ranked_by_held_out_accuracy_and_the_test_set_is_not_shown(tmp_path):
    lines: list[str] = []
    chosen = tune(TINY, "topk-ef-0.99", {"lr": [1e-5, 0.05]}, rounds=2, holdout=0.2,
                  out=tmp_path / "t", echo=lines.append)
    local = {}
    for point in ("lr_1e-05", "lr_0.05"):
        keys, rows, summary = read_run(tmp_path / "t" / "runs" / point)
        assert summary["status"] == "completed" and keys["run_config"]["local-test-fraction"] == 0.2
        local[point] = rows[-1]["accuracy_local"]
    best = max(local, key=local.get)
    assert chosen == {"method": "fedavg", "uplink": "topk-ef",
                      "lr": 0.05 if best == "lr_0.05" else 1e-5}
    assert local["lr_0.05"] > local["lr_1e-05"]  # a real step beats none on any split
    table = (tmp_path / "t" / "tune.md").read_text()
    assert f"{local['lr_0.05']:.4f}" in table and "test set is not used" in table
    assert not re.search(r"accuracy [\d-]", "\n".join(lines))  # no test accuracy shown
