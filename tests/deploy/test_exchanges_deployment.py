"""Two exchanges per round and local evaluation over gRPC (the simulation test's twin)."""

from __future__ import annotations

import pytest

from fedsqueeze.deploy.config_check import find_app_dir
from fedsqueeze.deploy.launch.deployment import DeployOptions, deploy

pytestmark = pytest.mark.deployment


def test_two_exchanges_per_round_and_local_evaluation_in_deployment(
        tmp_path, check_two_exchanges_and_local_evaluation):
    run_config = {"results-dir": str(tmp_path), "run-name": "normclip", "engine": "deployment",
                  "partitioner": "iid", "round-timeout": 180.0, "method": "normclip",
                  "num-server-rounds": 2, "min-nodes": 3, "local-test-fraction": 0.2,
                  "local-eval-every": 1}
    result = deploy(find_app_dir(), run_config, tmp_path / "normclip",
                    DeployOptions(clients=3, echo=False))
    rounds = check_two_exchanges_and_local_evaluation(result)
    assert all(r["wire_up"] > r["message_up"] and r["wire_down"] > 0 for r in rounds)
