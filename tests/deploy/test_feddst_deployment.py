"""FedDST in a real deployment: a readjustment round (client masks up as coded changes, the
server's merged mask down as a diff against the one each client holds) over gRPC."""

from __future__ import annotations

import pytest

from fedsqueeze.deploy.config_check import find_app_dir
from fedsqueeze.deploy.launch.deployment import DeployOptions, deploy
from fedsqueeze.deploy.launch.processes import processes_of_launch
from fedsqueeze.server.results import read_run

pytestmark = pytest.mark.deployment


def test_two_feddst_rounds_in_deployment_readjust_then_send_the_mask_as_a_diff(tmp_path):
    result = deploy(find_app_dir(), {
        "results-dir": str(tmp_path), "run-name": "feddst", "engine": "deployment",
        "method": "feddst", "partitioner": "iid", "num-server-rounds": 2, "min-nodes": 2,
        "round-timeout": 180.0, "feddst.alpha": 0.2, "feddst.readjust-end": 3},
        tmp_path / "feddst", DeployOptions(clients=2, echo=False))
    assert result.succeeded, result.status
    assert processes_of_launch(result.launch_id) == []
    _, rows, _ = read_run(result.results_dir)
    first, second = rows
    assert first["feddst_readjusted"] and first["feddst_mask_full"] == 2
    assert first["feddst_mask_bytes_up"] > 0 and first["feddst_dropped"] > 0
    assert not second["feddst_readjusted"] and second["feddst_mask_diff"] == 2
    assert second["failed_replies"] == 0 and second["feddst_mask_bytes_up"] == 0
    assert second["wire_up"] >= second["message_up"] >= second["payload_up"] > 0
