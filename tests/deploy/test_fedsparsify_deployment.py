"""FedSparsify (Global) in a real deployment: SuperLink + 2 SuperNodes over gRPC, 2 rounds.

`start-round = 0` makes round 1 prune already (s_1 = 0.7875 with T = 2), so round 2 carries a
sparse downlink (values + coded positions) and a masked uplink (values only), and ends at
s_f = 0.9. This is the suite's deployment on Flower's stock executor (a fresh ClientApp
interpreter per message, Flower's own waits); the others run on the warm worker.
"""

from __future__ import annotations

import pytest

from fedsqueeze.deploy.config_check import find_app_dir
from fedsqueeze.deploy.launch.deployment import DeployOptions, deploy
from fedsqueeze.deploy.launch.processes import processes_of_launch
from fedsqueeze.server.results import read_run

APP = find_app_dir()
PARAMS = 118_282
pytestmark = pytest.mark.deployment


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("fedsparsify")
    run_config = {"results-dir": str(tmp_path), "run-name": "fsp", "engine": "deployment",
                  "partitioner": "iid", "round-timeout": 180.0, "num-server-rounds": 2,
                  "method": "fedsparsify", "fedsparsify.variant": "global",
                  "fedsparsify.final-sparsity": 0.9, "fedsparsify.start-round": 0}
    return deploy(APP, run_config, tmp_path / "fsp",
                  DeployOptions(clients=2, flower="stock", echo=False))


def test_fedsparsify_deployment_completes_without_leftover_processes(deployed):
    config, _, _ = read_run(deployed.results_dir)
    assert config["deployment"] == {**config["deployment"], "executor": "stock",
                                    "flower": "stock", "supernode_flower": "stock"}
    assert deployed.succeeded, deployed.status
    assert deployed.leftover_pids == [] and processes_of_launch(deployed.launch_id) == []


def test_schedule_and_sparsity_are_in_every_row(deployed):
    _, rounds, summary = read_run(deployed.results_dir)
    assert [r["round"] for r in rounds] == [1, 2] and summary["method"] == "fedsparsify"
    assert rounds[0]["target_sparsity"] == pytest.approx(0.7875)
    assert rounds[1]["target_sparsity"] == pytest.approx(0.9)
    for row in rounds:
        assert row["nonzeros"] <= (1 - row["target_sparsity"]) * PARAMS + 50
        assert row["nonzeros"] <= row["mask_kept"]
        assert row["sparsity"] == pytest.approx(1 - row["mask_kept"] / PARAMS)
        assert row["paper_comm_bits"] == 32 * row["paper_comm_params"]


def test_sparse_bytes_on_every_layer(deployed):
    _, rounds, _ = read_run(deployed.results_dir)
    second = rounds[1]
    kept = rounds[0]["mask_kept"]   # the mask sent down in round 2
    for client in second["per_client"].values():
        # down: kept values + coded positions; up: kept values only (no positions)
        assert 4 * kept < client["payload_down"] < 4 * kept + PARAMS // 8 + 200
        assert 4 * kept < client["payload_up"] < 4 * kept + 200
        for d in ("up", "down"):
            assert client[f"payload_{d}"] <= client[f"message_{d}"] <= client[f"wire_{d}"]
    for client in rounds[0]["per_client"].values():   # round 1: the dense initial model,
        for d in ("up", "down"):                       # trivial positions, no dense zeros
            assert 4 * PARAMS < client[f"payload_{d}"] < 4 * PARAMS + 200
