"""Run-config `plugins`: a user's own dataset (float feature vectors, not uint8 images) and
model, registered by a module the run config names, reach every process: in process, in
Flower's simulation engine (Ray actors) and in a deployment; a changed loader never gets
stale partitions; a module that cannot be imported says where it was looked for."""

from __future__ import annotations

import os
import sys

import pytest

from fedsqueeze.data import dataset_identity
from fedsqueeze.deploy.config_check import checked_run_config, find_app_dir
from fedsqueeze.deploy.inprocess import Federation
from fedsqueeze.server.results import read_run
from fedsqueeze.strategies.settings import ConfigError, RunSettings

PLUGIN = '''
"""A user's plugin: Gaussian blobs (8 float features, 3 classes), a tiny MLP, a loss and an
optimizer of its own."""
import numpy as np
import torch
from torch import nn

from fedsqueeze.data import DatasetInfo, register_dataset
from fedsqueeze.models import register_model
from fedsqueeze.strategies.training import register_loss, register_optimizer

CALLS = {"loss": 0, "optimizer": 0}

CENTRES = np.random.default_rng(7).normal(0.0, 3.0, size=(3, 8)).astype(np.float32)


@register_dataset(DatasetInfo("{name}", 3, (1, 1, 8)), layout="generated")
def blobs(root, train, download):
    rng = np.random.default_rng(1 if train else 2)
    labels = rng.integers(0, 3, size=1200 if train else 300)
    features = CENTRES[labels] + rng.normal(size=(len(labels), 8)).astype(np.float32)
    return features.astype(np.float32), labels.astype(np.int64)


@register_model("{name}-mlp")
def mlp(num_classes, in_shape):
    return nn.Sequential(nn.Flatten(), nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, num_classes))


@register_loss("{name}-smooth")
def smooth(reduction):
    CALLS["loss"] += 1
    return nn.CrossEntropyLoss(reduction=reduction, label_smoothing=0.05)


@register_optimizer("{name}-adam")
def adam(params, *, lr, momentum, weight_decay):
    CALLS["optimizer"] += 1
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
'''


def _plugin(folder, name):
    (folder / f"{name}.py").write_text(PLUGIN.replace("{name}", name))
    return {"plugins": name, "dataset": name, "model": f"{name}-mlp", "input-scale": 1.0,
            "loss": f"{name}-smooth", "optimizer": f"{name}-adam", "lr": 0.02,
            "partitioner": "iid", "num-server-rounds": 3, "min-nodes": 2}


@pytest.fixture
def on_path(tmp_path, monkeypatch):
    """`tmp_path` importable here and in every process started from here (PYTHONPATH); what
    a plugin registers in this process is gone after the test."""
    from fedsqueeze.data import datasets
    from fedsqueeze.models import registry
    from fedsqueeze.strategies import training

    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])]))
    monkeypatch.setattr(datasets, "_REGISTRY", dict(datasets._REGISTRY))
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(training, "LOSSES", dict(training.LOSSES))
    monkeypatch.setattr(training, "OPTIMIZERS", dict(training.OPTIMIZERS))
    modules = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - modules:
        if name.startswith("blobs_"):
            del sys.modules[name]


def test_a_plugins_dataset_and_model_train_in_process(on_path):
    keys = _plugin(on_path, "blobs_inproc")
    rows = Federation(keys, clients=2, results_dir=on_path / "r").run(3)
    assert rows[-1]["accuracy"] > 0.8  # three separated blobs; chance is 1/3
    assert rows[-1]["params"] == 8 * 16 + 16 + 16 * 3 + 3
    calls = sys.modules["blobs_inproc"].CALLS  # its loss and optimizer trained and evaluated
    assert calls["optimizer"] == 2 * 3 and calls["loss"] >= 2 * 3


def test_a_changed_loader_has_another_identity_so_no_stale_partition(on_path):
    _plugin(on_path, "blobs_ident")
    RunSettings.from_run_config({"plugins": "blobs_ident"})
    before = dataset_identity("blobs_ident")
    assert before.startswith("blobs_ident.blobs:")
    source = on_path / "blobs_ident.py"
    source.write_text(source.read_text().replace("size=(3, 8)", "size=(3, 8)) * 1.5 + (0"))
    assert dataset_identity("blobs_ident") != before


def test_a_plugin_that_cannot_be_imported_or_an_unknown_loss_is_a_clear_error():
    with pytest.raises(ConfigError, match="cannot import 'no_such_plugin'.*PYTHONPATH"):
        RunSettings.from_run_config({"plugins": "no_such_plugin"})
    with pytest.raises(ConfigError, match="'loss' = 'nope': one of cross-entropy"):
        checked_run_config(find_app_dir(), {"loss": "nope"})


@pytest.mark.simulation
def test_ray_actors_load_the_plugin_too(on_path):
    from fedsqueeze.deploy.simulate import simulate

    keys = _plugin(on_path, "blobs_ray")
    run_config = {**keys, "results-dir": str(on_path), "run-name": "ray",
                  "engine": "simulation", "round-timeout": 120.0}
    result = simulate(find_app_dir(), run_config, on_path / "ray", clients=2,
                      cpus_per_client=1, gpus_per_client=0.0, echo=False)
    assert result.succeeded, result.status
    _, rows, _ = read_run(on_path / "ray")
    assert len(rows) == 3 and rows[-1]["accuracy"] > 0.8


@pytest.mark.deployment
def test_the_launcher_and_a_deployments_processes_load_the_plugin(on_path):
    from fedsqueeze.deploy.cli import main
    from fedsqueeze.deploy.flower import format_run_config

    keys = _plugin(on_path, "blobs_dep")
    assert main(["deploy", "--clients", "2", "--quiet", "--results-dir", str(on_path),
                 "--run-name", "dep", "--run-config", format_run_config(keys)]) == 0
    _, rows, summary = read_run(on_path / "dep")
    assert summary["status"] == "completed" and rows[-1]["accuracy"] > 0.8
    assert rows[-1]["wire_up"] > 0
