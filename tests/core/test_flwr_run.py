"""Plain `flwr run . <connection>` with a local-simulation connection, as Flower users do it."""

from __future__ import annotations

import json
import subprocess

import psutil
import pytest

from fedsqueeze.deploy.config_check import find_app_dir
from fedsqueeze.deploy.flower import (
    flower_command,
    flower_env,
    format_run_config,
    free_port,
    local_superlinks,
    stop_local_superlink,
)
from fedsqueeze.server.results import read_run

pytestmark = pytest.mark.simulation


def test_flwr_run_local_simulation_then_stop_local_leaves_nothing(tmp_path):
    home, port = tmp_path / "flwr-home", free_port()
    home.mkdir()
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "local-sim"\n\n'
        '[superlink.local-sim]\naddress = ":local-in-memory:"\n')
    env = {**flower_env(home), "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(port),
           "FLWR_LOCAL_CONTROL_API_PORT": str(free_port())}
    flwr = flower_command("flwr")
    overrides = format_run_config({"num-server-rounds": 1, "partitioner": "iid",
                                   "results-dir": str(tmp_path), "run-name": "plain"})
    try:
        submitted = subprocess.run(
            [flwr, "run", str(find_app_dir()), "local-sim", "--format", "json",
             "--federation-config", "num-supernodes=2", "--run-config", overrides],
            env=env, capture_output=True, text=True, timeout=300)
        run_id = json.loads(submitted.stdout)["run-id"]
        subprocess.run([flwr, "log", str(run_id), "local-sim", "--stream"], env=env,
                       capture_output=True, timeout=300)
        listed = subprocess.run([flwr, "ls", "local-sim", "--run-id", str(run_id), "--format",
                                 "json"], env=env, capture_output=True, text=True, timeout=120)
        status = json.loads(listed.stdout)["runs"][0]["status"]
        assert status == "finished:completed", listed.stdout
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
