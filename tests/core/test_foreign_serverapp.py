"""A ServerApp that is not fedsqueeze's (`tests/fixtures/foreign_app.py`) drives every
registered method through Flower's own `Strategy.start`: in process, and in Flower's
simulation engine."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedsqueeze.deploy.inprocess import InProcessGrid
from fedsqueeze.strategies.registry import method_names

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "foreign_app.py"


def _foreign():
    spec = importlib.util.spec_from_file_location("foreign_app", FIXTURE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", method_names())
def test_every_method_runs_under_flowers_start_in_process(name):
    foreign = _foreign()
    _, initial = foreign.strategy_from_run_config({"method": name})
    result = foreign.run_method(InProcessGrid({}, clients=3), name)
    row = foreign.summary(name, result, initial)
    assert row["train_rounds"] == [1, 2] and row["finite"] and row["changed"], row
    assert all(np.isfinite(row["train_loss"]))


@pytest.mark.simulation
def test_every_method_runs_under_flowers_start_in_the_simulation_engine(tmp_path):
    out = tmp_path / "out.json"
    env = {**os.environ, "FOREIGN_APP_OUT": str(out), "FLWR_TELEMETRY_ENABLED": "0",
           "RAY_DEDUP_LOGS": "0"}
    done = subprocess.run([sys.executable, str(FIXTURE), "3"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=900)
    assert out.is_file(), done.stderr[-3000:]
    rows = {row["method"]: row for row in json.loads(out.read_text())}
    assert sorted(rows) == method_names()
    for row in rows.values():
        assert row["train_rounds"] == [1, 2] and row["finite"] and row["changed"], row
