"""GWPF in a real deployment: two exchanges per round (signals, then values) over gRPC, the
clients' models and masks in context.state on the warm path."""

from __future__ import annotations

import pytest

from fedsqueeze.deploy.config_check import find_app_dir
from fedsqueeze.deploy.launch.deployment import DeployOptions, deploy
from fedsqueeze.deploy.launch.processes import processes_of_launch
from fedsqueeze.server.results import read_run

pytestmark = pytest.mark.deployment


def test_two_gwpf_rounds_in_deployment_sync_by_delta(tmp_path):
    result = deploy(find_app_dir(), {
        "results-dir": str(tmp_path), "run-name": "gwpf", "engine": "deployment",
        "method": "gwpf", "partitioner": "iid", "num-server-rounds": 2, "min-nodes": 2,
        "round-timeout": 180.0, "gwpf.tau-freeze": 0.9}, tmp_path / "gwpf",
        DeployOptions(clients=2, echo=False))
    assert result.succeeded, result.status
    assert processes_of_launch(result.launch_id) == []
    _, rows, _ = read_run(result.results_dir)
    first, second = rows
    assert sorted(first["exchanges"]) == ["signals", "train"]
    assert (first["gwpf_down_full"], second["gwpf_down_delta"]) == (2, 2)
    assert second["failed_replies"] == 0 and second["gwpf_frozen_fraction"] > 0
    assert second["wire_up"] >= second["message_up"] >= second["payload_up"] > 0
