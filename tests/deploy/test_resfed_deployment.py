"""ResFed in a real deployment: SuperLink + 2 SuperNodes over gRPC, 2 rounds (warm-up, then
residuals both ways); client state persists in context.state and the copies agree bit-exactly."""

from __future__ import annotations

import pytest

from fedsqueeze.deploy.config_check import find_app_dir
from fedsqueeze.deploy.launch.deployment import DeployOptions, deploy
from fedsqueeze.deploy.launch.processes import processes_of_launch
from fedsqueeze.server.results import read_run

APP = find_app_dir()
pytestmark = pytest.mark.deployment


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resfed-dep")
    run_config = {"results-dir": str(tmp), "run-name": "resfed", "engine": "deployment",
                  "method": "resfed", "partitioner": "iid", "round-timeout": 180.0,
                  "num-server-rounds": 2}
    return deploy(APP, run_config, tmp / "resfed", DeployOptions(clients=2, echo=False))


def test_resfed_deployment_completes_without_leftover_processes(deployed):
    assert deployed.succeeded, deployed.status
    assert deployed.leftover_pids == [] and processes_of_launch(deployed.launch_id) == []


def test_warm_up_then_residuals_with_zero_reconstruction_gap(deployed):
    _, rounds, summary = read_run(deployed.results_dir)
    assert summary["method"] == "resfed" and len(rounds) == 2
    first, second = rounds
    assert (first["resfed_down_full"], first["resfed_up_full"]) == (2, 2)
    assert (second["resfed_down_residual"], second["resfed_up_residual"]) == (2, 2)
    for row in rounds:
        assert row["reconstruction_gap"] == 0 and row["failed_replies"] == 0
        assert row["resfed_resyncs"] == 0 and row["resfed_version_mismatch"] == 0
    assert second["compression_down"] >= 100 and second["compression_up"] >= 100
    assert second["payload_down_residual"] == second["payload_down"]


def test_context_state_persists_and_bytes_are_layered(deployed):
    _, rounds, _ = read_run(deployed.results_dir)
    for row in rounds:
        for p in ("0", "1"):
            client = row["per_client"][p]
            assert client["rounds_trained"] == row["round"]
            for d in ("up", "down"):
                assert 0 < client[f"payload_{d}"] <= client[f"message_{d}"] <= client[f"wire_{d}"]
