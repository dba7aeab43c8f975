"""Run-config `plugins`: a user's own dataset (float feature vectors, not uint8 images), model,
loss, optimizer, metric and results sink, registered by a module the run config names, reach
every process: in process and in a deployment of fedsqueeze's app (Flower's Ray actors load
the same plugin under `flwr run` in tests/core/test_user_app.py); a changed loader never gets
stale partitions; a module that cannot be imported says where it was looked for."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from fedsqueeze.data import dataset_identity
from fedsqueeze.deploy.config_check import checked_run_config, find_app_dir
from fedsqueeze.deploy.inprocess import Federation
from fedsqueeze.server.results import read_run
from fedsqueeze.strategies.settings import ConfigError, RunSettings

# the plugin of tests/fixtures/user-app, registered under other names ("user-" -> "<name>-")
PLUGIN = (Path(__file__).resolve().parents[1] / "fixtures" / "user-app" / "user_app"
          / "blobs.py").read_text()


def _plugin(folder, name):
    (folder / f"{name}.py").write_text(PLUGIN.replace('"user-', f'"{name}-'))
    return {"plugins": name, "dataset": f"{name}-blobs", "model": f"{name}-mlp",
            "input-scale": 1.0, "loss": f"{name}-smooth-ce", "optimizer": f"{name}-adam",
            "lr": 0.02, "metrics": f"{name}-recall-0", "local-test-fraction": 0.2,
            "local-eval-every": 3, "partitioner": "iid", "num-server-rounds": 3, "min-nodes": 2}


@pytest.fixture
def on_path(tmp_path, monkeypatch, plugins_forgotten):
    """`tmp_path` importable here and in every process started from here (PYTHONPATH); what
    a plugin registers in this process is gone after the test."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])]))
    with plugins_forgotten("blobs_"):
        yield tmp_path


def test_a_plugins_dataset_and_model_train_in_process(on_path):
    keys = _plugin(on_path, "blobs_inproc")
    fed = Federation({**keys, "sinks": "blobs_inproc-rows"}, clients=2,
                     results_dir=on_path / "r")
    rows = fed.run(3)
    fed.runner.writer.finish("completed", 1.0)
    assert rows[-1]["accuracy"] > 0.8  # three separated blobs; chance is 1/3
    assert rows[-1]["params"] == 8 * 32 + 32 + 32 * 3 + 3
    plugin = sys.modules["blobs_inproc"]
    calls = plugin.CALLS  # its loss and optimizer trained and evaluated
    assert calls["optimizer"] == 2 * 3 and calls["loss"] >= 2 * 3
    # its metric, central every round and on the clients' local splits in round 3
    assert all(0 <= r["metrics"]["blobs_inproc-recall-0"] <= 1 for r in rows)
    assert rows[-1]["metrics"]["blobs_inproc-recall-0"] > 0.8
    assert 0 <= rows[-1]["metrics_local"]["blobs_inproc-recall-0"] <= 1
    assert "metrics_local" not in rows[0]
    # its sink got every row as written, then the close
    assert plugin.ROWS == [*rows, "closed"]


def test_an_unknown_metric_or_sink_is_a_clear_error():
    with pytest.raises(ConfigError, match="'metrics' names 'f2': not a registered metric"):
        checked_run_config(find_app_dir(), {"metrics": "f2"})
    with pytest.raises(ConfigError, match="'sinks' names 'wandb': one of tensorboard"):
        checked_run_config(find_app_dir(), {"sinks": "wandb"})


def test_a_changed_loader_has_another_identity_so_no_stale_partition(on_path):
    _plugin(on_path, "blobs_ident")
    RunSettings.from_run_config({"plugins": "blobs_ident"})
    before = dataset_identity("blobs_ident-blobs")
    assert before.startswith("blobs_ident.blobs:")
    source = on_path / "blobs_ident.py"
    source.write_text(source.read_text().replace("size=(3, 8)", "size=(3, 8)) * 1.5 + (0"))
    assert dataset_identity("blobs_ident-blobs") != before


def test_a_plugin_that_cannot_be_imported_or_an_unknown_loss_is_a_clear_error():
    with pytest.raises(ConfigError, match="cannot import 'no_such_plugin'.*PYTHONPATH"):
        RunSettings.from_run_config({"plugins": "no_such_plugin"})
    with pytest.raises(ConfigError, match="'loss' = 'nope': one of cross-entropy"):
        checked_run_config(find_app_dir(), {"loss": "nope"})


@pytest.mark.deployment
def test_the_launcher_and_a_deployments_processes_load_the_plugin(on_path):
    from fedsqueeze.deploy.cli import main
    from fedsqueeze.deploy.launch.flower import format_run_config

    keys = {**_plugin(on_path, "blobs_dep"), "sinks": "tensorboard"}
    assert main(["deploy", "--clients", "2", "--quiet", "--results-dir", str(on_path),
                 "--run-name", "dep", "--run-config", format_run_config(keys)]) == 0
    _, rows, summary = read_run(on_path / "dep")
    assert summary["status"] == "completed" and rows[-1]["accuracy"] > 0.8
    assert rows[-1]["wire_up"] > 0
    assert "blobs_dep-recall-0" in rows[-1]["metrics_local"]  # from the SuperNodes' ClientApps
    # TensorBoard: the ServerApp's scalars and the launcher's wire bytes, one log directory
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    events = EventMultiplexer().AddRunsFromDirectory(str(on_path / "dep" / "tensorboard"))
    events.Reload()
    logged = {tag: {e.step: e.value for run in events.Runs()
                    if tag in events.GetAccumulator(run).Tags()["scalars"]
                    for e in events.Scalars(run, tag)}
              for tag in ("accuracy", "metrics/blobs_dep-recall-0", "bytes/wire_up",
                          "bytes/message_down")}
    for tag, key in (("accuracy", "accuracy"), ("bytes/wire_up", "wire_up"),
                     ("bytes/message_down", "message_down")):
        assert logged[tag] == {r["round"]: pytest.approx(r[key], rel=1e-6) for r in rows}, tag
    assert logged["metrics/blobs_dep-recall-0"][3] == pytest.approx(
        rows[-1]["metrics"]["blobs_dep-recall-0"])
