"""`fedsqueeze deploy --auth` (issue 13, part 5): SuperNode authentication over TLS; an
unregistered SuperNode is refused and the run proceeds with the registered ones."""

from __future__ import annotations

import pytest

from fedsqueeze.deploy.config_check import find_app_dir
from fedsqueeze.deploy.launch.deployment import DeployOptions, deploy
from fedsqueeze.deploy.launch.processes import processes_of_launch
from fedsqueeze.server.results import read_run

pytestmark = pytest.mark.deployment


def test_an_unregistered_supernode_is_refused_and_the_run_proceeds(tmp_path):
    result = deploy(find_app_dir(), {
        "results-dir": str(tmp_path), "run-name": "auth", "engine": "deployment",
        "partitioner": "iid", "num-server-rounds": 1, "min-nodes": 2, "round-timeout": 180.0},
        tmp_path / "auth", DeployOptions(clients=2, tls=True, auth=True, unregistered=1,
                                         echo=False))
    assert result.succeeded, result.status
    assert processes_of_launch(result.launch_id) == []
    config, rows, _ = read_run(result.results_dir)
    assert config["deployment"]["auth"] and config["deployment"]["tls"]
    assert sorted(config["clients"]) == ["0", "1"] and all(not r["failures"] for r in rows)
    assert result.wire["protocol"] == {"0": "TLS", "1": "TLS"}
    refused = (result.logs_dir / "supernode-2.log").read_text()
    assert "Failed to activate SuperNode" in refused


def test_auth_without_tls_is_refused_before_anything_starts():
    with pytest.raises(ValueError, match="needs TLS"):
        DeployOptions(clients=2, auth=True)
