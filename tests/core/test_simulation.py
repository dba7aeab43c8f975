"""Real Flower simulations (Ray engine) through the launcher: slow-ish, the heart of the suite.

One run with a client that fails every round (fault injection) checks failure accounting,
the results schema, the byte layers, context.state persistence and teardown.
"""

from __future__ import annotations

import json

import pytest

from fedsqueeze.deploy.config_check import find_app_dir
from fedsqueeze.deploy.inprocess import Federation
from fedsqueeze.deploy.launch.processes import processes_of_launch
from fedsqueeze.deploy.launch.simulate import simulate
from fedsqueeze.server.results import ROUND_KEYS, SUMMARY_KEYS, read_run

APP = find_app_dir()
pytestmark = pytest.mark.simulation


def run_sim(tmp_path, name, clients, **config):
    run_config = {"results-dir": str(tmp_path), "run-name": name, "engine": "simulation",
                  "partitioner": "iid", "round-timeout": 120.0, **config}
    return simulate(APP, run_config, tmp_path / name, clients=clients, cpus_per_client=1,
                    gpus_per_client=0.0, echo=False)


@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    """3 clients, partition 2 raises in every round, min-nodes 2: the run must complete."""
    return run_sim(tmp_path_factory.mktemp("sim"), "faulty", 3, **{
        "num-server-rounds": 2, "min-nodes": 2, "fail-partitions": "2"})


def test_run_completes_and_leaves_no_flower_process(faulty):
    assert faulty.succeeded, faulty.status
    assert faulty.leftover_pids == []
    assert processes_of_launch(faulty.launch_id) == []


def test_failed_client_is_counted_and_reported_every_round(faulty):
    _, rounds, summary = read_run(faulty.results_dir)
    assert [r["failed_replies"] for r in rounds] == [1, 1]
    for row in rounds:
        assert row["failures"][0]["partition_id"] == 2
        assert "fault injected for partition 2" in row["failures"][0]["reason"]
    assert summary["failed_replies"] == 2


def test_results_follow_the_public_schema(faulty):
    config, rounds, summary = read_run(faulty.results_dir)
    assert len(rounds) == 2
    for row in rounds:
        assert set(ROUND_KEYS) <= set(row)
        assert row["wire_up"] is None and row["wire_down"] is None
        assert 0.0 <= row["accuracy"] <= 1.0 and row["params"] == 118_282
    assert set(SUMMARY_KEYS) <= set(summary)
    assert summary["engine"] == "simulation" and summary["status"] == "completed"
    assert summary["flwr_version"].startswith("1.39")
    assert config["run_config"]["method"] == "fedavg" and config["run_config"]["lr"] == 0.02
    assert summary["payload_up"] == sum(r["payload_up"] for r in rounds)
    json.dumps(config)  # everything needed to rerun is plain JSON


def test_payload_never_exceeds_message_bytes_per_client_and_direction(faulty):
    _, rounds, _ = read_run(faulty.results_dir)
    for row in rounds:
        for pid, client in row["per_client"].items():
            assert client["payload_down"] <= client["message_down"], pid
            assert client["payload_up"] <= client["message_up"], pid
        assert row["per_client"]["2"]["payload_up"] == 0  # it failed: nothing uploaded
        assert 0 < row["payload_down"] <= row["message_down"]


def test_context_state_counter_survives_across_rounds(faulty):
    _, rounds, _ = read_run(faulty.results_dir)
    for row in rounds:
        for pid in ("0", "1"):
            assert row["per_client"][pid]["rounds_trained"] == row["round"]


def test_run_fails_when_fewer_than_min_nodes_reply(tmp_path):
    result = run_sim(tmp_path, "too-few", 2, **{
        "num-server-rounds": 2, "min-nodes": 2, "fail-partitions": "1"})
    assert not result.succeeded
    assert result.status["status"] == "finished:failed"
    _, rounds, summary = read_run(result.results_dir)
    assert rounds == [] and summary["status"] == "failed"
    assert "1 of 2 replies succeeded in exchange 'train', min-nodes = 2" in summary["error"]
    assert result.leftover_pids == []


def test_flowers_ray_engine_and_the_in_process_engine_give_identical_accuracies(faulty, tmp_path):
    """Runs are deterministic across engines (a failing client included), so compare's
    default engine stands for Ray's."""
    config, rows, _ = read_run(faulty.results_dir)
    keys = ("num-server-rounds", "min-nodes", "fail-partitions", "partitioner")
    federation = Federation({**{k: config["run_config"][k] for k in keys}, "num-partitions": 3},
                            clients=3, results_dir=tmp_path)
    ray = [r["accuracy"] for r in rows]
    assert [r["accuracy"] for r in federation.run(2)] == ray and len(ray) == 2


def test_report_prints_the_run_and_draws_three_plots(faulty, tmp_path):
    import io

    from rich.console import Console

    from fedsqueeze.server.report import report

    out = io.StringIO()
    paths = report([faulty.results_dir], tmp_path, Console(file=out, width=250), per_round=True)
    assert sorted(p.name for p in paths) == ["accuracy_vs_bytes.png", "accuracy_vs_round.png",
                                             "nonzeros_vs_round.png"]
    assert all(p.stat().st_size > 1000 for p in paths)
    text = out.getvalue()
    assert "faulty" in text and "fedavg" in text and "completed" in text


def test_two_exchanges_per_round_and_local_evaluation_in_simulation(
        tmp_path, check_two_exchanges_and_local_evaluation):
    result = run_sim(tmp_path, "normclip", 3, **{
        "method": "normclip", "num-server-rounds": 2, "min-nodes": 3,
        "local-test-fraction": 0.2, "local-eval-every": 1})
    check_two_exchanges_and_local_evaluation(result)
