"""Shared fixtures."""

from __future__ import annotations

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
