"""A Flower user's app (`tests/fixtures/user-app`): its own ServerApp drives every registered
method through Flower's `Strategy.start`, with fedsqueeze's ClientApp, on the user's own model,
dataset, loss, optimizer and metric (a plugin module the run config names; nothing else of
fedsqueeze's configuration copied), in process, in Flower's simulation engine (`flwr run`) and
in a deployment (`fedsqueeze deploy --app`). No workaround: the app is a plain Flower app."""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path

import pytest
from flwr.app import Context, RecordDict

from fedsqueeze.deploy.inprocess import InProcessGrid
from fedsqueeze.server.results import read_run
from fedsqueeze.strategies.registry import method_names

APP = Path(__file__).resolve().parents[1] / "fixtures" / "user-app"
CONFIG = tomllib.loads((APP / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]


def check(rows: list[dict], methods: list[str], rounds: int = 3) -> None:
    """Every method ran its rounds, evaluated with the metric; in 3 rounds each learned the
    blobs (chance: 1/3; FedSparsify has pruned 90% of the weights by then)."""
    assert [r["method"] for r in rows] == methods
    for row in rows:
        assert row["train_rounds"] == list(range(1, rounds + 1)), row
        assert 0 <= row["recall-0"] <= 1, row
        if rounds == 3:
            assert row["accuracy"][-1] > 0.6, row


@pytest.fixture(scope="module")
def server_app(plugins_forgotten):
    sys.path.insert(0, str(APP))
    try:
        with plugins_forgotten("user_app"):
            from user_app import server
            yield server
    finally:
        sys.path.remove(str(APP))


@pytest.mark.parametrize("name", method_names())
def test_every_method_on_the_users_model_and_data_in_process(server_app, tmp_path, name):
    config = {**CONFIG, "methods": name, "out": str(tmp_path / "out.json")}
    server_app.main(InProcessGrid(config, clients=3),
                    Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                            run_config=config))
    check(json.loads((tmp_path / "out.json").read_text()), [name])


@pytest.mark.simulation
def test_every_method_under_flwr_run_in_flowers_simulation_engine(tmp_path, flwr_run_local):
    out = tmp_path / "out.json"
    status, log = flwr_run_local(APP, f"out='{out}'", supernodes=3)
    assert status == "finished:completed", log[-3000:]
    check(json.loads(out.read_text()), method_names())


@pytest.mark.deployment
def test_every_method_in_a_deployment_with_rows_by_round(tmp_path):
    from fedsqueeze.deploy.cli import main

    out = tmp_path / "out.json"
    assert main(["deploy", "--app", str(APP), "--clients", "2", "--quiet", "--results-dir",
                 str(tmp_path), "--run-name", "user", "--run-config",
                 f"out='{out}' num-server-rounds=2"]) == 0
    check(json.loads(out.read_text()), method_names(), rounds=2)
    _, rows, summary = read_run(tmp_path / "user")
    # eleven runs of Flower's Strategy.start, two rounds each (GWPF's and normclip's with an
    # exchange before train): a row per round, each with both SuperNodes' wire bytes
    assert summary["status"] == "completed"
    assert [r["round"] for r in rows] == list(range(1, 2 * len(method_names()) + 1))
    assert all(sorted(r["per_client"]) == ["0", "1"] and r["wire_up"] > 0 for r in rows)
