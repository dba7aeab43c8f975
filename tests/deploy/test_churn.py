"""Churn in a real deployment (issue 13, part 1 and 3): a SuperNode SIGKILLed mid-round costs
its reply, not the run; restarted, it rejoins under a new node id and resyncs; a dead
SuperLink or ServerApp leaves results that say so."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psutil
import pytest

from fedsqueeze.deploy.config_check import find_app_dir
from fedsqueeze.deploy.launch.deployment import DeployOptions, deploy
from fedsqueeze.deploy.launch.faults import Kill
from fedsqueeze.deploy.launch.flower import PROCESS_NAMES
from fedsqueeze.deploy.launch.processes import processes_of_launch
from fedsqueeze.server.results import read_run

APP = find_app_dir()
pytestmark = pytest.mark.deployment
DETECTION = 30.0  # the SuperLink declares a node dead 2 heartbeat intervals (2 x 10 s) late


def _config(tmp_path, name, **config):
    return {"results-dir": str(tmp_path), "run-name": name, "engine": "deployment",
            "partitioner": "iid", "round-timeout": 300.0, "min-nodes": 2, **config}


def test_a_supernode_killed_mid_round_costs_its_reply_then_rejoins_and_resyncs(tmp_path):
    result = deploy(APP, _config(tmp_path, "churn", method="resfed",
                                 **{"num-server-rounds": 3}),
                    tmp_path / "churn",
                    DeployOptions(clients=3, echo=False, kills=(Kill(2, (1,)),),
                                  restart_after=1.0))
    assert result.succeeded, result.status
    assert processes_of_launch(result.launch_id) == []
    config, rows, summary = read_run(result.results_dir)
    events = config["deployment"]["fault_events"]
    assert [(e["action"], e["partition"]) for e in events] == [("kill", 1), ("restart", 1)]
    killed = rows[1]
    assert [f["partition_id"] for f in killed["failures"]] == [1] and not killed["skipped"]
    assert killed["seconds"] < DETECTION + 10, "the round waited for more than detection"
    rejoined = next(r for r in rows if r["rejoined"])
    assert rejoined["rejoined"] == [1] and rejoined["round"] in (2, 3)
    later = [r for r in rows if r["round"] > rejoined["round"]] or [rejoined]
    assert later[0]["resfed_resyncs"] == 1 or rejoined["resfed_resyncs"] == 1
    last = rows[-1]
    assert last["failed_replies"] == 0 and last["reconstruction_gap"] == 0
    assert last["per_client"]["1"]["rounds_trained"] >= 1  # the new node trains again
    assert summary["status"] == "completed"


def _kill_when_a_round_is_written(results: Path, names: tuple[str, ...]) -> threading.Thread:
    """Kill our own descendant whose command line names one of `names`, once round 1 is
    written."""
    me = psutil.Process()

    def kill() -> None:
        rounds = results / "rounds.jsonl"
        deadline = time.monotonic() + 240
        while not (rounds.exists() and rounds.read_text().strip()):
            if time.monotonic() > deadline:
                return
            time.sleep(0.2)
        for proc in me.children(recursive=True):
            try:
                if any(name in part for part in proc.cmdline() for name in names):
                    proc.kill()
                    thread.killed_at = time.monotonic()
            except psutil.NoSuchProcess:
                pass

    thread = threading.Thread(target=kill, daemon=True)
    thread.killed_at = None
    thread.start()
    return thread


# each as Flower starts it, or through the launcher's entry point with short waits
@pytest.mark.parametrize("victim, status", [
    (PROCESS_NAMES["superlink"], "server-lost"),
    (PROCESS_NAMES["serverapp"], "server-lost")])
def test_a_dead_superlink_or_serverapp_leaves_results_that_say_so(tmp_path, victim, status):
    name = victim[0].split("-")[1]
    killer = _kill_when_a_round_is_written(tmp_path / name, victim)
    result = deploy(APP, _config(tmp_path, name, **{"num-server-rounds": 30}),
                    tmp_path / name, DeployOptions(clients=2, echo=False))
    noticed = time.monotonic()
    killer.join()
    assert killer.killed_at is not None, f"no {victim} process was found to kill"
    # the launcher notices within seconds (AppWatch, the SuperLink's exit), not after Flower's
    # 60 s of task-heartbeat patience
    assert noticed - killer.killed_at < 30
    assert not result.succeeded
    assert processes_of_launch(result.launch_id) == []
    _, rows, summary = read_run(result.results_dir)
    assert summary["status"] == status, summary
    assert summary["rounds"] == len(rows) >= 1 and summary["error"]
    assert all(r["wire_up"] > 0 for r in rows)  # the finished rounds have their wire bytes


def test_a_deployment_resumes_from_its_checkpoint_through_the_cli(tmp_path):
    """`fedsqueeze deploy --resume RUN_DIR` continues the run directory: row 1 stays, rows 2-3
    are appended by a new SuperLink and new SuperNodes."""
    import subprocess
    import sys

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "fedsqueeze.deploy.cli", "deploy",
                               "--clients", "2", "--quiet", *args], capture_output=True,
                              text=True, timeout=600)

    first = cli("--results-dir", str(tmp_path), "--run-name", "r", "--run-config",
                "num-server-rounds=1 checkpoint-every=1 partitioner='iid'")
    assert first.returncode == 0, first.stdout + first.stderr
    _, before, _ = read_run(tmp_path / "r")
    resumed = cli("--resume", str(tmp_path / "r"), "--run-config", "num-server-rounds=3")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    config, rows, summary = read_run(tmp_path / "r")
    assert [r["round"] for r in rows] == [1, 2, 3] and rows[:1] == before
    assert config["resumed"][0]["after_round"] == 1 and summary["status"] == "completed"
    assert config["resumed"][0]["changed"]["num-server-rounds"] == [1, 3]
    assert all(r["wire_up"] > 0 for r in rows) and summary["wire_up"] == sum(
        r["wire_up"] for r in rows)
    assert not (tmp_path / "r" / ".launch").exists()
