"""Checkpoints and --resume (issue 13, part 4): a run killed after round k and resumed from
its last checkpoint reaches the same rows as an uninterrupted one."""

from __future__ import annotations

import json

import pytest

from fedsqueeze.deploy.inprocess import Federation
from fedsqueeze.server.checkpoint import latest_checkpoint
from fedsqueeze.server.results import read_run
from fedsqueeze.strategies.settings import ConfigError

RUN = {"num-server-rounds": 5, "num-partitions": 60, "min-nodes": 2, "checkpoint-every": 2}
FEDSPARSIFY = {"method": "fedsparsify", "fedsparsify.final-sparsity": 0.8}


def _accuracies(run_dir) -> list[tuple[int, float]]:
    _, rounds, _ = read_run(run_dir)
    return [(r["round"], r["accuracy"]) for r in rounds]


@pytest.mark.parametrize("method", [{"method": "fedavg"}, FEDSPARSIFY],
                         ids=lambda m: m["method"])
def test_a_resumed_run_reaches_the_rows_of_an_uninterrupted_one(tmp_path, method):
    whole = Federation({**RUN, **method}, clients=3, results_dir=tmp_path, run_name="whole")
    whole.run(5)
    killed = Federation({**RUN, **method}, clients=3, results_dir=tmp_path, run_name="killed")
    killed.run(3)  # checkpoint after round 2; round 3's row is written, then the "kill"
    assert latest_checkpoint(tmp_path / "killed").round == 2
    resumed = Federation({**RUN, **method, "resume": True}, clients=3, results_dir=tmp_path,
                         run_name="killed")
    assert resumed.round == 2
    resumed.run(3)
    resumed.runner.writer.finish("completed", 0.0)
    assert _accuracies(tmp_path / "killed") == _accuracies(tmp_path / "whole")
    config, rounds, summary = read_run(tmp_path / "killed")
    assert [r["round"] for r in rounds] == [1, 2, 3, 4, 5]  # round 3 once, not twice
    assert config["resumed"][0]["after_round"] == 2 and summary["rounds"] == 5
    assert latest_checkpoint(tmp_path / "killed").round == 5


def test_resfed_clients_of_a_resumed_run_resync_and_it_completes(tmp_path):
    run = {**RUN, "method": "resfed"}
    Federation(run, clients=3, results_dir=tmp_path, run_name="r").run(2)
    resumed = Federation({**run, "resume": True}, clients=3, results_dir=tmp_path,
                         run_name="r")
    rows = resumed.run(3)
    assert rows[0]["resfed_resyncs"] == 3 and rows[0]["resfed_down_full"] == 3
    assert rows[0]["failed_replies"] == 0 and rows[-1]["resfed_resyncs"] == 0
    assert rows[-1]["accuracy"] > 0.3


def test_resume_without_a_checkpoint_says_so(tmp_path):
    Federation({**RUN, "checkpoint-every": 0}, clients=3, results_dir=tmp_path,
               run_name="r").run(1)
    with pytest.raises(RuntimeError, match="has no checkpoint"):
        Federation({**RUN, "resume": True}, clients=3, results_dir=tmp_path, run_name="r")


def test_a_checkpoint_is_whole_or_absent(tmp_path):
    fed = Federation({**RUN, "checkpoint-every": 1}, clients=3, results_dir=tmp_path)
    fed.run(2)
    base = tmp_path / "inprocess" / "checkpoints"
    assert [p.name for p in base.iterdir()] == ["round-000002"]  # older ones removed
    meta = json.loads((base / "round-000002" / "checkpoint.json").read_text())
    assert meta["round"] == 2
    assert sorted(p.name for p in (base / "round-000002" / "model").iterdir()) == [
        "state.json", "state.npz"]


def test_checkpoint_every_is_validated():
    from fedsqueeze.strategies.settings import RunSettings
    with pytest.raises(ConfigError, match="checkpoint-every"):
        RunSettings.from_run_config({"checkpoint-every": -1})
