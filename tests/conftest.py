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
