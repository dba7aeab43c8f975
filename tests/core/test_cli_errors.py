"""Bad input ends in one clear line naming the problem, before any process starts."""

from __future__ import annotations

import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict

from fedsqueeze.client.app import identify
from fedsqueeze.client.runtime import client_data
from fedsqueeze.data import DataError
from fedsqueeze.deploy.cli import main
from fedsqueeze.strategies.settings import ConfigError, RunSettings


def run_cli(capsys, *argv):
    code = main(list(argv))
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


@pytest.mark.parametrize("override, expected", [
    ("method='fedsparse'", "'method' = 'fedsparse' is invalid: unknown method, valid: fedadam"),
    ("dataset='imagenet'", "unknown dataset 'imagenet'"),
    ("lr=-0.5", "'lr' = -0.5 is invalid: must be > 0"),
    ("fraction-train=2.0", "'fraction-train' = 2.0 is invalid: must be in (0, 1]"),
    ("num-server-rounds=0", "'num-server-rounds' = 0 is invalid: must be >= 1"),
    ("lr-rate=0.1", "unknown run-config key 'lr-rate'"),
    ("\"dense.dtype\"='int4'", "'dense.dtype' = 'int4' is invalid: must be one of fp32"),
    ("uplink='zip'", "'uplink' = 'zip' is invalid: unknown channel, valid: dense"),
    ("model='resnet50'", "unknown model 'resnet50'"),
    ("model='vgg16-gn'", "model 'vgg16-gn' cannot take input shape (1, 28, 28)"),
    ("seed=99999999999999999999", "'seed' = 99999999999999999999 is invalid: must be in [0, 2^63)"),
    ("run-name='..'", "'run-name' = '..' is invalid: must be a plain directory name"),
])
def test_bad_run_config_is_one_error_line_with_exit_code_2(capsys, override, expected):
    code, err = run_cli(capsys, "simulate", "--clients", "2", "--run-config", override)
    assert code == 2 and len(err) == 1
    assert err[0].startswith("fedsqueeze: error: ") and expected in err[0]


def test_missing_data_files_say_how_to_get_them(capsys, tmp_path, monkeypatch):
    code, err = run_cli(capsys, "simulate", "--clients", "2", "--run-config",
                        f"dataset='mnist' data-dir='{tmp_path}'")
    assert code == 2 and len(err) == 1
    assert "mnist" in err[0] and str(tmp_path) in err[0] and "data-download=true" in err[0]


def test_fewer_clients_than_min_nodes_is_rejected(capsys):
    code, err = run_cli(capsys, "simulate", "--clients", "1")
    assert code == 2 and "fewer than run-config min-nodes = 2" in err[0]


def test_partition_id_out_of_range_names_both_numbers():
    with pytest.raises(DataError, match="partition-id 12 out of range for num-partitions 10"):
        client_data(RunSettings(), {"partition-id": 12, "num-partitions": 10},
                    torch.device("cpu"))


def test_node_without_partition_id_is_told_how_to_start(flower_task):
    context = Context(run_id=1, node_id=5, node_config={}, state=RecordDict(),
                      run_config={})
    query = Message(RecordDict({"config": ConfigRecord({"query": "identity"})}),
                    dst_node_id=5, message_type="query")
    with pytest.raises(DataError, match="--node-config"):
        identify(query, context)


def test_report_of_a_directory_that_is_not_a_run(capsys, tmp_path):
    code, err = run_cli(capsys, "report", str(tmp_path))
    assert code == 2 and "is not a fedsqueeze results directory" in err[0]


def test_gpu_ids_that_are_not_integers_are_rejected_before_anything_starts(capsys):
    code, err = run_cli(capsys, "deploy", "--clients", "2", "--gpus", "zz")
    assert code == 2 and len(err) == 1 and "--gpus 'zz': GPU ids are non-negative" in err[0]


def test_nan_is_written_as_null_and_a_truncated_last_line_is_skipped(tmp_path):
    import json

    from fedsqueeze.server.results import ROUND_KEYS, ResultsWriter, read_run

    writer = ResultsWriter(tmp_path, {"run_config": {"method": "fedavg"}})
    row = {key: 0 for key in ROUND_KEYS}
    writer.write_round({**row, "round": 1, "loss": float("nan"),
                        "per_client": {"0": {"train_loss": float("inf")}}})
    writer.write_round({**row, "round": 2})
    line = (tmp_path / "rounds.jsonl").read_text().splitlines()[0]
    assert json.loads(line)["loss"] is None and "NaN" not in line and "Infinity" not in line
    with open(tmp_path / "rounds.jsonl", "a") as f:
        f.write('{"round": 3, "accu')  # what a run killed mid-write leaves
    with pytest.warns(UserWarning, match="truncated last line 3"):
        _, rounds, _ = read_run(tmp_path)
    assert [r["round"] for r in rounds] == [1, 2]


def test_an_existing_run_name_is_refused_unless_overwrite(capsys, tmp_path):
    run = tmp_path / "taken"
    run.mkdir()
    (run / "config.json").write_text("{}")
    code, err = run_cli(capsys, "simulate", "--clients", "2", "--results-dir", str(tmp_path),
                        "--run-name", "taken", "--run-config", "num-server-rounds=1")
    assert code == 2 and "holds a run already" in err[0] and "--overwrite" in err[0]
    assert (run / "config.json").read_text() == "{}"  # nothing touched


def test_a_key_of_another_method_gets_a_warning(capsys, monkeypatch):
    import fedsqueeze.deploy.cli as cli

    monkeypatch.setattr(cli, "launch_config", lambda *a, **k: (_ for _ in ()).throw(
        cli.ConfigError("stop here")))
    code, err = run_cli(capsys, "simulate", "--clients", "2", "--run-config",
                        "\"fedsparsify.final-sparsity\"=0.5")
    assert code == 2
    assert any("'fedsparsify.final-sparsity' is a key of 'fedsparsify', which neither "
               "method = 'fedavg' nor the run's channels use" in line for line in err)
    # a key of a channel the run names is that channel's, and no warning
    code, err = run_cli(capsys, "simulate", "--clients", "2", "--run-config",
                        "uplink='topk-ef' \"topk-ef.values\"='q8'")
    assert code == 2 and not any("warning" in line for line in err)


def test_a_deployment_on_another_flower_than_1_39_says_what_to_install(monkeypatch):
    from fedsqueeze.deploy.launch import flower

    flower.require_grpc_flower("1.39.0")  # this one runs
    with pytest.raises(ConfigError, match=r"Flower 1.42.0.*pip install 'fedsqueeze\[deploy\]'"):
        flower.require_grpc_flower("1.42.0")
    monkeypatch.setattr(flower.importlib.metadata, "version", lambda name: "1.40.1")
    assert main(["deploy", "--clients", "2"]) == 2


def test_methods_lists_every_method_and_channel_with_its_keys(capsys):
    from fedsqueeze.strategies.channel import channel_names
    from fedsqueeze.strategies.registry import method_names

    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    listed = [line.split(":")[0].strip() for line in out.splitlines()
              if line.startswith("  ") and not line.startswith("      ")]
    assert listed == method_names() + channel_names()
    assert '      fedavgm.server-momentum = 0.9    FedAvgM: server momentum' in out
    assert main(["methods", "topk-ef"]) == 0
    one = capsys.readouterr().out
    assert "topk-ef.values = \"fp32\"" in one and "fedavgm" not in one
    assert main(["methods", "nope"]) == 2
    assert "no method or channel named 'nope'" in capsys.readouterr().err


def test_the_readme_shows_what_methods_brief_prints(capsys):
    """The README's list of methods and channels is the command's output, whole."""
    from pathlib import Path

    assert main(["methods", "--brief"]) == 0
    out = capsys.readouterr().out
    assert "      " not in out  # no keys
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert f"```\n{out}```" in readme


@pytest.mark.parametrize("argv, expected", [
    (("server", "--clients", "2"), "give the SuperNodes' public keys (--node-keys"),
    (("server", "--clients", "2", "--listen", "::"), "--listen '::': an IPv4 address"),
    (("server", "--clients", "2", "--insecure", "--node-keys", "nowhere.pub"),
     "--node-keys: no such file: nowhere.pub"),
    (("server", "--clients", "3", "--port", "65535", "--no-auth"), "ports 65535..65537"),
    (("client", "--server", "h:9092", "--partitions", "0", "--clients", "2"),
     "pass --root-certificates with its ca.crt, or --insecure"),
    (("client", "--server", "h", "--partitions", "0", "--clients", "2", "--insecure"),
     "--server 'h': HOST:PORT"),
    (("client", "--server", "h:1", "--partitions", "0,0", "--clients", "2", "--insecure"),
     "distinct ids in 0..1"),
    (("client", "--server", "h:1", "--partitions", "a", "--clients", "2", "--insecure"),
     "--partitions 'a': comma-separated integers"),
    (("client", "--server", "h:1", "--partitions", "0", "--clients", "1",
      "--root-certificates", "missing.crt"), "copy the server's ca.crt here"),
])
def test_server_and_client_commands_refuse_bad_input_before_starting(capsys, argv, expected):
    code, err = run_cli(capsys, *argv)
    assert code == 2 and len(err) == 1 and expected in err[0], err
