"""The warm ClientApp worker: ClientApps forked from warm imports, CUDA untouched in the
parent, state kept, polls told apart from traffic, nothing left behind however the launcher
ends."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from fedsqueeze.deploy.config_check import find_app_dir
from fedsqueeze.deploy.launch.deployment import DeployOptions, deploy
from fedsqueeze.deploy.launch.processes import processes_of_launch
from fedsqueeze.server.results import read_run

pytestmark = pytest.mark.deployment


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    out = tmp_path_factory.mktemp("warm")
    run_config = {"results-dir": str(out), "run-name": "warm", "engine": "deployment",
                  "partitioner": "iid", "num-server-rounds": 3, "round-timeout": 180.0}
    return deploy(find_app_dir(), run_config, out / "warm", DeployOptions(clients=2, echo=False))


def test_config_records_the_executor_and_the_waits(warm):
    assert warm.succeeded, warm.status
    config, rounds, _ = read_run(warm.results_dir)
    assert config["deployment"]["executor"] == "warm"
    deployment = config["deployment"]
    assert deployment["flower"] == "accelerated" and deployment["flower_off"] == []
    assert [r["per_client"]["1"]["rounds_trained"] for r in rounds] == [1, 2, 3]  # state kept


def test_the_worker_parent_never_initialised_cuda_and_served_every_task(warm):
    log = (warm.logs_dir / "warm-worker.log").read_text()
    status = json.loads([line for line in log.splitlines() if line.startswith("{")][-1])
    assert status["cuda_initialized"] is False
    # 2 nodes x (identity query + 3 train messages) ran in forked children of the worker
    assert log.count("client device: cpu") == 8
    supernode_logs = "".join((warm.logs_dir / f"supernode-{i}.log").read_text() for i in (0, 1))
    assert "flwr-clientapp" not in supernode_logs  # no interpreter started per message
    assert warm.leftover_pids == [] and processes_of_launch(warm.launch_id) == []


def test_poll_bytes_are_reported_apart_and_message_calls_stay_above_the_message_layer(warm):
    _, rounds, summary = read_run(warm.results_dir)
    for row in rounds:
        assert row["wire_poll_estimated"] is False
        assert row["wire_poll_up"] > 0 and row["wire_poll_down"] > 0   # polls in every round
        for d in ("up", "down"):
            assert row[f"message_{d}"] <= row[f"wire_{d}"]
    check = summary["message_vs_flower"]
    assert abs(check["up_ratio"] - 1) < 0.03 and abs(check["down_ratio"] - 1) < 0.03


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_a_launcher_stopped_by_a_signal_leaves_no_process_forked_ones_included(tmp_path, signum):
    cli = [sys.executable, "-m", "fedsqueeze.deploy.cli", "deploy", "--clients", "2",
           "--quiet", "--results-dir", str(tmp_path), "--run-name", "killed",
           "--run-config", "num-server-rounds=50 partitioner='iid'"]
    proc = subprocess.Popen(cli, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    rounds = tmp_path / "killed" / "rounds.jsonl"
    deadline = time.monotonic() + 240
    while not (rounds.exists() and rounds.read_text().strip()):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.5)
    import psutil

    launch = set()
    for child in psutil.Process(proc.pid).children(recursive=True):
        try:  # a ClientApp child may end between listing and reading it
            launch.add(child.environ().get("FEDSQUEEZE_LAUNCH_ID"))
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    launch -= {None}
    assert len(launch) == 1
    proc.send_signal(signum)
    proc.communicate(timeout=120)
    deadline = time.monotonic() + 60
    while processes_of_launch(next(iter(launch))) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert processes_of_launch(next(iter(launch))) == []
    # the results say why the run ended, report reads them, the working files are gone
    _, rows, summary = read_run(tmp_path / "killed")
    assert summary["status"] == "interrupted" and summary["rounds"] == len(rows) >= 1
    assert "after round" in summary["error"] or "launcher" in summary["error"]
    if signum == signal.SIGTERM:  # the launcher itself filled the wire bytes of those rounds
        assert all(r["wire_up"] > 0 for r in rows)
        assert not (tmp_path / "killed" / ".launch").exists()
    report = subprocess.run([sys.executable, "-m", "fedsqueeze.deploy.cli", "report",
                             str(tmp_path / "killed")], capture_output=True, text=True)
    assert report.returncode == 0 and "interrupted" in report.stdout, report.stdout


def test_a_slot_is_held_until_its_holder_lets_go(tmp_path):
    import fcntl
    import os

    from fedsqueeze.deploy.accelerated.warm_worker import Slots

    slots = Slots(tmp_path, 1, "running")
    held = slots.acquire()
    other = os.open(slots.paths[0], os.O_RDWR)
    with pytest.raises(BlockingIOError):
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.close(held)  # what a child's exit does, however it ends
    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.close(other)


def test_a_reading_slot_is_held_while_a_partition_is_read_and_only_then(tmp_path, monkeypatch):
    import contextlib

    import torch

    from fedsqueeze.client import runtime
    from fedsqueeze.deploy.accelerated.warm_worker import Slots
    from fedsqueeze.strategies.settings import RunSettings

    slots = Slots(tmp_path, 1, "reading")
    entered = []

    @contextlib.contextmanager
    def gate():
        with slots.held():
            entered.append(slots.paths[0].name)
            yield

    monkeypatch.setattr(runtime, "reading_gate", gate)
    runtime._client_data.cache_clear()
    settings = RunSettings.from_run_config({"partitioner": "iid"})
    node = {"partition-id": 2, "num-partitions": 7}
    runtime.client_data(settings, node, torch.device("cpu"))
    runtime.client_data(settings, node, torch.device("cpu"))  # in this process's cache now
    assert entered == ["reading-0"]
    assert_free(slots.paths[0])  # released after the reading ...
    with pytest.raises(RuntimeError), slots.held():
        raise RuntimeError("a failed reading")
    assert_free(slots.paths[0])  # ... and after a failed one
    runtime._client_data.cache_clear()


def assert_free(path):
    import fcntl
    import os

    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises BlockingIOError if held
    finally:
        os.close(fd)


def test_a_superexec_holds_the_partition_its_child_read_for_the_next_children():
    import os

    import torch

    from fedsqueeze.client import runtime
    from fedsqueeze.deploy.accelerated.warm_worker import PartitionHints
    from fedsqueeze.strategies.settings import RunSettings

    settings = RunSettings.from_run_config({"partitioner": "iid"})
    node = {"partition-id": 1, "num-partitions": 7}
    runtime._client_data.cache_clear()
    hints = PartitionHints()
    pid = os.fork()
    if pid == 0:  # a ClientApp child: reads its partition, which reports it
        code = 1
        try:
            hints.in_child()
            runtime.client_data(settings, node, torch.device("cpu"))
            code = 0
        finally:
            os._exit(code)
    assert os.waitpid(pid, 0)[1] == 0
    assert runtime._client_data.cache_info().currsize == 0  # the child's reading stayed there
    hints.take()
    assert runtime._client_data.cache_info().currsize == 1
    before = runtime._client_data.cache_info().hits
    held = runtime.client_data(settings, node, torch.device("cpu"))  # what a child forked now
    assert runtime._client_data.cache_info().hits == before + 1      # finds without reading
    assert held.partition_id == 1 and held.num_examples > 0
    hints.take()  # nothing new: nothing read again
    assert runtime._client_data.cache_info().currsize == 1
    runtime._client_data.cache_clear()


def test_a_superexec_imports_nothing_after_the_worker_forks_it():
    code = ("import sys; from fedsqueeze.deploy.accelerated import warm_worker as w; "
            "w._warm_imports(); before = set(sys.modules); "
            "from fedsqueeze.deploy.accelerated.flower_internals import clientapp_entry, "
            "install_executor; "
            "install_executor(w.ForkExecutor); w.ForkExecutor(); "
            "print(sorted(set(sys.modules) - before))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"  # imported before the fork: shared, not per SuperExec
