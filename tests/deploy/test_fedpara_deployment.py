"""FedPara and pFedPara in a real deployment: the same transformed model built on the server
and in every ClientApp; pFedPara's local factors kept in context.state across rounds."""

from __future__ import annotations

import pytest

from fedsqueeze.deploy.config_check import find_app_dir
from fedsqueeze.deploy.launch.deployment import DeployOptions, deploy
from fedsqueeze.deploy.launch.processes import processes_of_launch
from fedsqueeze.server.results import read_run

pytestmark = pytest.mark.deployment

FC2_FACTORS, FC2_LOCAL = 74_650, 37_192  # fc2 at gamma 0.5: all factors, W2's factors


@pytest.mark.parametrize("method, travelling", [("fedpara", FC2_FACTORS),
                                                ("pfedpara", FC2_FACTORS - FC2_LOCAL)])
def test_two_rounds_in_deployment_send_factors_only(tmp_path, method, travelling):
    result = deploy(find_app_dir(), {
        "results-dir": str(tmp_path), "run-name": method, "engine": "deployment",
        "method": method, "partitioner": "iid", "num-server-rounds": 2, "min-nodes": 2,
        "round-timeout": 180.0, "local-test-fraction": 0.2, "local-eval-every": 2},
        tmp_path / method, DeployOptions(clients=2, echo=False))
    assert result.succeeded, result.status
    assert processes_of_launch(result.launch_id) == []
    config, rows, _ = read_run(result.results_dir)
    assert config["run_config"]["fedpara.gamma"] == 0.5
    for row in rows:
        assert row["failed_replies"] == 0
        assert 4 * travelling <= row["payload_up"] / 2 <= 4 * travelling + 200
    assert [r["per_client"]["0"]["rounds_trained"] for r in rows] == [1, 2]
    assert 0 < rows[-1]["accuracy_local"] <= 1
