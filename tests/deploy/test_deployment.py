"""A real deployment: a SuperLink and SuperNodes as processes talking gRPC on 127.0.0.1."""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from fedsqueeze.deploy.config_check import find_app_dir
from fedsqueeze.deploy.launch.deployment import DeployOptions, deploy
from fedsqueeze.deploy.launch.processes import LAUNCH_ID_VAR, processes_of_launch
from fedsqueeze.server.results import read_run

APP = find_app_dir()
pytestmark = pytest.mark.deployment


def launch_ids_below(pid: int) -> set[str]:
    """Launch ids carried by the descendants of `pid` (a launcher run as a subprocess)."""
    ids = set()
    for child in psutil.Process(pid).children(recursive=True):
        try:
            if LAUNCH_ID_VAR in (env := child.environ()):
                ids.add(env[LAUNCH_ID_VAR])
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return ids


def run_deploy(tmp_path, name, clients, options=None, **config):
    run_config = {"results-dir": str(tmp_path), "run-name": name, "engine": "deployment",
                  "partitioner": "iid", "round-timeout": 180.0, **config}
    return deploy(APP, run_config, tmp_path / name,
                  options or DeployOptions(clients=clients, echo=False))


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    return run_deploy(tmp_path_factory.mktemp("dep"), "two", 2, **{"num-server-rounds": 2})


def test_deployment_completes_without_leftover_processes(deployed):
    assert deployed.succeeded, deployed.status
    assert deployed.leftover_pids == [] and processes_of_launch(deployed.launch_id) == []


def test_supernodes_speak_grpc_over_http2_to_the_superlink(deployed):
    assert deployed.wire["protocol"] == {"0": "HTTP/2 (gRPC, cleartext)",
                                         "1": "HTTP/2 (gRPC, cleartext)"}


def test_supernodes_send_one_compact_auth_header_after_registering(deployed):
    """The accelerated SuperNodes send Flower's auth headers (their whole key, and the
    runtime version) on RegisterNode and ActivateNode only; every other call's request
    headers are about 105 B (one 80-byte auth header), not 436 (Flower's) or 176 (the key
    named by its id, the timestamp and DER signature as Flower sends them)."""
    _, _, summary = read_run(deployed.results_dir)
    calls = summary["wire_calls"]
    per_call = {path: c["up HeadersFrame"] / c["calls"] for path, c in calls.items()}
    assert per_call["RegisterNode"] > 400 and per_call["ActivateNode"] > 250
    for path in ("PullMessages", "PullObject", "PushObject", "PushMessages", "SendNodeHeartbeat"):
        assert per_call[path] < 130, (path, per_call[path])


def test_payload_le_message_le_wire_per_node_and_direction(deployed):
    _, rounds, summary = read_run(deployed.results_dir)
    assert summary["wire_below_message"] == []  # no upload was deduplicated here
    for row in rounds:
        assert set(row["per_client"]) == {"0", "1"}
        for client in row["per_client"].values():
            for d in ("up", "down"):
                assert 0 < client[f"payload_{d}"] <= client[f"message_{d}"] <= client[f"wire_{d}"]
        assert row["message_up"] <= row["wire_up"] and row["message_down"] <= row["wire_down"]
    assert summary["wire_up"] == sum(r["wire_up"] for r in rounds)
    assert summary["engine"] == "deployment"
    assert summary["transport"] == "grpc-rere (Fleet API)"


def test_message_totals_agree_with_flower_network_traffic_within_3_percent(deployed):
    check = deployed.wire["message_vs_flower"]
    assert abs(check["up_ratio"] - 1) < 0.03 and abs(check["down_ratio"] - 1) < 0.03, check


def test_context_state_persists_across_rounds_in_deployment(deployed):
    _, rounds, _ = read_run(deployed.results_dir)
    for row in rounds:
        assert [row["per_client"][p]["rounds_trained"] for p in ("0", "1")] == [row["round"]] * 2


def test_forced_client_failure_fails_the_run_and_stops_everything(tmp_path, monkeypatch):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the launcher's Flower home goes
    result = run_deploy(tmp_path, "fail", 2, **{"num-server-rounds": 2, "fail-partitions": "1"})
    assert not result.succeeded and result.status["status"] == "finished:failed"
    _, _, summary = read_run(result.results_dir)
    assert "fault injected for partition 1" in summary["error"]
    assert result.leftover_pids == [] and processes_of_launch(result.launch_id) == []
    assert list(scratch.iterdir()) == []  # its Flower home and certificates are removed too


def wait_for_first_round(proc: subprocess.Popen, rounds: Path, timeout: float = 240) -> None:
    """Until the launcher `proc` has written one results row (it must stay alive meanwhile)."""
    deadline = time.monotonic() + timeout
    while not (rounds.exists() and rounds.read_text().strip()):
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "no round finished in time"
        time.sleep(0.5)


def test_ctrl_c_mid_run_stops_every_process(tmp_path):
    cli = [sys.executable, "-m", "fedsqueeze.deploy.cli", "deploy", "--clients", "2",
           "--quiet", "--results-dir", str(tmp_path), "--run-name", "interrupted",
           "--run-config", "num-server-rounds=50 partitioner='iid'"]
    # a shell without job control starts background jobs with SIGINT ignored, and children
    # inherit that: give the launcher the disposition an interactive Ctrl-C would meet
    proc = subprocess.Popen(cli, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    wait_for_first_round(proc, tmp_path / "interrupted" / "rounds.jsonl")
    launch_ids = launch_ids_below(proc.pid)
    assert len(launch_ids) == 1, "the deployment should be running"
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, output
    assert "interrupted" in output
    assert processes_of_launch(launch_ids.pop()) == []


def test_tls_deployment_completes_and_the_relays_see_tls(tmp_path):
    result = deploy(APP, {"results-dir": str(tmp_path), "run-name": "tls", "engine": "deployment",
                          "partitioner": "iid", "num-server-rounds": 1},
                    tmp_path / "tls", DeployOptions(clients=2, tls=True, echo=False))
    assert result.succeeded, result.status
    assert result.wire["protocol"] == {"0": "TLS", "1": "TLS"}
    assert processes_of_launch(result.launch_id) == []


def test_sigterm_to_a_script_calling_simulate_stops_ray_too(tmp_path):
    # a bench script calls simulate() directly, without the CLI's handlers; Flower's
    # simulation process and its Ray workers are not the launcher's children
    script = (
        "import sys; from pathlib import Path\n"
        "from fedsqueeze.deploy.config_check import find_app_dir\n"
        "from fedsqueeze.deploy.launch.simulate import simulate\n"
        "out = Path(sys.argv[1])\n"
        "simulate(find_app_dir(), {'results-dir': str(out), 'run-name': 'killed',\n"
        "          'num-server-rounds': 50, 'partitioner': 'iid', 'engine': 'simulation'},\n"
        "         out / 'killed', clients=2, cpus_per_client=1, gpus_per_client=0.0, echo=False)\n")
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for_first_round(proc, tmp_path / "killed" / "rounds.jsonl")
    launch_ids = launch_ids_below(proc.pid)
    assert len(launch_ids) == 1
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert processes_of_launch(launch_ids.pop()) == []


def test_stock_supernodes_under_the_accelerated_server(tmp_path):
    """A mixed deployment: Flower's own SuperNodes (and executor) send their whole key with
    every call and are served as by Flower. (Accelerated SuperNodes under a stock SuperLink
    fall back to whole keys: tests/deploy/test_flower_internals.py.)"""
    server, nodes = "accelerated", "stock"
    options = DeployOptions(clients=2, flower=server, supernode_flower=nodes, echo=False)
    result = run_deploy(tmp_path, "mixed", 2, options, **{"num-server-rounds": 1})
    assert result.succeeded, result.status
    config, rounds, summary = read_run(result.results_dir)
    assert config["deployment"]["flower"] == server
    assert config["deployment"]["supernode_flower"] == nodes
    assert config["deployment"]["executor"] == "stock"
    assert len(rounds) == 1 and rounds[0]["wire_up"] > rounds[0]["message_up"] > 0
    calls = summary["wire_calls"]["PullObject"]
    assert calls["up HeadersFrame"] / calls["calls"] > 400  # whole keys
