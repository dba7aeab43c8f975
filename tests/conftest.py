"""Shared fixtures."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import pytest
from flwr.supercore.task_identity import TaskIdentity


@pytest.fixture
def flower_task():
    """Flower needs a task identity to build Messages outside a running app."""
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


@pytest.fixture(autouse=True, scope="session")
def _private_partition_cache(tmp_path_factory):
    """Every test, and the Flower processes it starts, use a fresh partition cache: no test
    reads what an earlier session left in ~/.cache, nor writes there."""
    import os

    saved = os.environ.get("FEDSQUEEZE_CACHE_DIR")
    os.environ["FEDSQUEEZE_CACHE_DIR"] = str(tmp_path_factory.mktemp("fedsqueeze-cache"))
    yield
    if saved is None:
        os.environ.pop("FEDSQUEEZE_CACHE_DIR", None)
    else:
        os.environ["FEDSQUEEZE_CACHE_DIR"] = saved


@contextlib.contextmanager
def _plugins_forgotten(*module_prefixes: str) -> Iterator[None]:
    """What plugins register inside (models, datasets, losses, optimizers, metrics, results
    sinks), and the plugin modules themselves, are gone afterwards."""
    from fedsqueeze.data import datasets
    from fedsqueeze.models import registry
    from fedsqueeze.strategies import sinks, training

    tables = [(datasets, "_REGISTRY"), (registry, "_REGISTRY"), (training, "LOSSES"),
              (training, "OPTIMIZERS"), (training, "METRICS"), (sinks, "SINKS")]
    saved = [dict(getattr(module, name)) for module, name in tables]
    modules = set(sys.modules)
    try:
        yield
    finally:
        for (module, name), table in zip(tables, saved):
            setattr(module, name, table)
        for name in set(sys.modules) - modules:
            if name.startswith(module_prefixes):
                del sys.modules[name]


@pytest.fixture(scope="session")
def plugins_forgotten():
    """`with plugins_forgotten("my_plugin"):` what plugins register inside is gone after."""
    return _plugins_forgotten


@pytest.fixture
def check_two_exchanges_and_local_evaluation():
    """normclip's two exchanges and the local evaluation, as every engine must run them (the
    simulation and deployment tests share these checks)."""
    from fedsqueeze.server.results import read_run

    def check(result) -> None:
        assert result.succeeded, result.status
        _, rounds, _ = read_run(result.results_dir)
        assert len(rounds) == 2
        for row in rounds:
            assert row["failed_replies"] == 0 and list(row["exchanges"]) == ["norms", "train"]
            assert row["exchanges"]["norms"]["payload_up"] == 0      # norms travel as metrics
            assert row["exchanges"]["train"]["payload_down"] == 0    # the bound only
            assert row["payload_up"] == row["exchanges"]["train"]["payload_up"]
            assert row["payload_up"] > 3 * 4 * 118_282
            assert row["clip_bound"] > 0 and row["clipped"] >= 1      # the median clips some
            assert 0 <= row["accuracy_local_min"] <= row["accuracy_local"] <= 1
            assert row["local_evaluations"] == 3 and row["eval_payload_down"] > 3 * 4 * 118_282
        return rounds

    return check


class LocalFlwrRun:
    """`flwr run APP local-sim` as a Flower user runs it: a private FLWR_HOME whose only
    connection is Flower's local in-memory SuperLink, on free ports."""

    def __init__(self, home) -> None:
        from fedsqueeze.deploy.launch.flower import flower_command, flower_env, free_port

        home.mkdir()
        (home / "config.toml").write_text(
            '[superlink]\ndefault = "local-sim"\n\n'
            '[superlink.local-sim]\naddress = ":local-in-memory:"\n')
        self.port = free_port()
        self.env = {**flower_env(home), "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(self.port),
                    "FLWR_LOCAL_CONTROL_API_PORT": str(free_port())}
        self.flwr = flower_command("flwr")

    def __call__(self, app_dir, overrides: str, supernodes: int = 2) -> tuple[str, str]:
        """(the run's final status as `flwr ls` says it, its log)."""
        import json
        import subprocess

        submitted = subprocess.run(
            [self.flwr, "run", str(app_dir), "local-sim", "--format", "json",
             "--federation-config", f"num-supernodes={supernodes}", "--run-config", overrides],
            env=self.env, capture_output=True, text=True, timeout=300)
        run_id = json.loads(submitted.stdout)["run-id"]
        log = subprocess.run([self.flwr, "log", str(run_id), "local-sim", "--stream"],
                             env=self.env, capture_output=True, text=True, timeout=300)
        listed = subprocess.run([self.flwr, "ls", "local-sim", "--run-id", str(run_id),
                                 "--format", "json"], env=self.env, capture_output=True,
                                text=True, timeout=120)
        return json.loads(listed.stdout)["runs"][0]["status"], log.stdout + log.stderr


@pytest.fixture
def flwr_run_local(tmp_path):
    """A `LocalFlwrRun`; Flower's local SuperLink (which outlives runs) is stopped after."""
    from fedsqueeze.deploy.launch.flower import stop_local_superlink

    run = LocalFlwrRun(tmp_path / "flwr-home")
    yield run
    stop_local_superlink(run.port)
