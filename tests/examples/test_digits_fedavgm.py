"""examples/digits-fedavgm, a Flower user's app (own CNN, data and training loop, Flower's
FedAvgM) compressed with `Compressed` + `compression_mod`: it learns, its bytes are metered
per round, and the README's diff is what the app's code says."""

from __future__ import annotations

import importlib
import json
import re
import sys
from pathlib import Path

import pytest
from flwr.app import Context, RecordDict

from fedsqueeze.deploy.inprocess import InProcessGrid
from fedsqueeze.server.results import read_run
from fedsqueeze.strategies.sinks import ROUNDS_LOG_ENV

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "digits-fedavgm"
PLAIN_APP = Path(__file__).resolve().parents[1] / "fixtures" / "plain-app"
CONFIG = {"num-server-rounds": 8, "fraction-train": 1.0, "local-epochs": 1, "lr": 0.05,
          "server-momentum": 0.5, "sparsity": 0.9}


@pytest.fixture(scope="module")
def example():
    sys.path.insert(0, str(EXAMPLE))
    try:
        yield (importlib.import_module("digits_fedavgm.server_app"),
               importlib.import_module("digits_fedavgm.client_app"),
               importlib.import_module("digits_fedavgm.task"))
    finally:
        sys.path.remove(str(EXAMPLE))


def test_the_example_learns_with_compressed_traffic_both_ways(example, tmp_path, monkeypatch):
    server_app, client_app, task = example
    out = tmp_path / "rows.json"
    monkeypatch.setenv(ROUNDS_LOG_ENV, str(tmp_path / "log.jsonl"))  # as `deploy --app` does
    config = {**CONFIG, "out": str(out)}
    grid = InProcessGrid(config, clients=3, clientapp=client_app.app)
    server_app.main(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                                  run_config=config))
    rows = json.loads(out.read_text())
    assert [r["round"] for r in rows] == list(range(1, 9))
    assert rows[-1]["accuracy"] > 0.7  # 10 classes; the untrained CNN is near 0.1
    fp32_model = 4 * sum(p.numel() for p in task.Net().parameters())
    for row in rows[1:]:  # after round 1 (the start model, a byte a weight): top-10% in q8
        assert row["payload-up"] < 3 * fp32_model / 10
        assert row["payload-down"] < 3 * fp32_model / 10
    assert rows[0]["payload-down"] < 3 * 1.1 * fp32_model / 4
    # what its Compressed gave the launcher's sink: the same bytes, per round and per node
    logged = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["round"] for r in logged] == list(range(1, 9))
    for row, log in zip(rows, logged):
        assert all(log[key.replace("-", "_")] == row[key] for key in
                   ("payload-up", "payload-down", "message-up", "message-down"))
        assert len(log["per_client"]) == 3
        assert sum(c["message_up"] for c in log["per_client"].values()) == row["message-up"]


def test_the_readme_diff_is_the_apps_code():
    """Every line the README's diff adds is in the app's code: the few lines that compress a
    plain Flower app."""
    readme = (EXAMPLE / "README.md").read_text()
    diff = re.search(r"```diff\n(.*?)```", readme, re.S).group(1)
    added = [line[1:].strip() for line in diff.splitlines()
             if line.startswith("+") and not line.startswith("+++")]
    code = "\n".join(p.read_text() for p in (EXAMPLE / "digits_fedavgm").glob("*.py"))
    assert added and all(line in code for line in added), added


@pytest.mark.simulation
def test_flwr_run_runs_the_example_in_flowers_simulation_engine(tmp_path, flwr_run_local):
    out = tmp_path / "rows.json"
    status, log = flwr_run_local(EXAMPLE, f"num-server-rounds=3 out='{out}'", supernodes=3)
    assert status == "finished:completed", log[-3000:]
    rows = json.loads(out.read_text())
    assert [r["round"] for r in rows] == [1, 2, 3]
    assert all(r["message-up"] > 0 and r["message-down"] > 0 for r in rows)


@pytest.mark.deployment
def test_fedsqueeze_deploy_runs_the_example_on_two_supernodes_and_meters_each(tmp_path):
    """`fedsqueeze deploy --app` on an app that is not fedsqueeze's: it completes; each
    round's row has the wire bytes of its messages (per SuperNode too) and the payload and
    message bytes the app's own `Compressed` counted; wire.json has each SuperNode's."""
    from fedsqueeze.deploy.cli import main

    out = tmp_path / "rows.json"
    code = main(["deploy", "--app", str(EXAMPLE), "--clients", "2", "--quiet",
                 "--results-dir", str(tmp_path), "--run-name", "any",
                 "--run-config", f"num-server-rounds=2 out='{out}'"])
    assert code == 0
    wire = json.loads((tmp_path / "any" / "wire.json").read_text())
    assert wire["flower_status"]["status"] == "finished:completed"
    assert sorted(wire["nodes"]) == ["0", "1"]
    own = json.loads(out.read_text())  # what the app printed from Flower's Result
    _, rows, summary = read_run(tmp_path / "any")
    assert summary["status"] == "completed" and [r["round"] for r in rows] == [1, 2]
    for row, mine in zip(rows, own):
        for direction in ("up", "down"):
            assert row[f"message_{direction}"] == mine[f"message-{direction}"]
            assert row[f"payload_{direction}"] == mine[f"payload-{direction}"]
            # the wire carries the messages, plus gRPC/HTTP-2 framing
            assert row[f"message_{direction}"] < row[f"wire_{direction}"] < \
                4 * row[f"message_{direction}"] + 20_000
        assert sorted(row["per_client"]) == ["0", "1"]
        assert all(c["wire_up"] > c["message_up"] > 0 for c in row["per_client"].values())
    for direction in ("up", "down"):
        assert all(n[f"message_{direction}"] > 0 for n in wire["nodes"].values())
        assert wire["total"][f"message_{direction}"] >= sum(r[f"wire_{direction}"]
                                                            for r in rows)


@pytest.mark.deployment
def test_an_app_with_no_fedsqueeze_code_gets_its_wire_bytes_by_round(tmp_path, capsys):
    from fedsqueeze.deploy.cli import main

    code = main(["deploy", "--app", str(PLAIN_APP), "--clients", "2", "--results-dir",
                 str(tmp_path), "--run-name", "plain", "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "plain: per round" in printed and "does not use fedsqueeze's Compressed" in printed
    _, rows, summary = read_run(tmp_path / "plain")
    assert summary["status"] == "completed" and [r["round"] for r in rows] == [1, 2]
    model = 100 * 100 * 4
    for row in rows:  # each SuperNode pulls the model twice (train, evaluate), sends it once
        assert row["message_up"] is None and row["payload_up"] is None
        assert sorted(row["per_client"]) == ["0", "1"]
        for client in row["per_client"].values():
            assert model < client["wire_up"] < 2 * model
            assert 2 * model < client["wire_down"] < 1.5 * 2 * model
