"""Plain `flwr run . <connection>` with a local-simulation connection, as Flower users do it."""

from __future__ import annotations

import psutil
import pytest

from fedsqueeze.deploy.config_check import find_app_dir
from fedsqueeze.deploy.launch.flower import (
    format_run_config,
    local_superlinks,
    stop_local_superlink,
)
from fedsqueeze.server.results import read_run

pytestmark = pytest.mark.simulation


def test_flwr_run_local_simulation_then_stop_local_leaves_nothing(tmp_path, flwr_run_local):
    port = flwr_run_local.port
    overrides = format_run_config({"num-server-rounds": 1, "partitioner": "iid",
                                   "results-dir": str(tmp_path), "run-name": "plain"})
    try:
        status, log = flwr_run_local(find_app_dir(), overrides)
        assert status == "finished:completed", log[-3000:]
        _, rounds, summary = read_run(tmp_path / "plain")
        assert len(rounds) == 1 and summary["engine"] == "simulation"
        assert local_superlinks(port), "Flower keeps its local SuperLink running after the run"
    finally:
        roots = local_superlinks(port)
        tree = [p.pid for r in roots for p in [r, *r.children(recursive=True)]]
        stop_local_superlink(port)
    assert not local_superlinks(port)
    assert not [pid for pid in tree if psutil.pid_exists(pid)
                and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
