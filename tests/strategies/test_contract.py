"""The method contract v2: discovery, key prefixes, the core's duties, the import boundaries,
local evaluation, and the exported server state of every registered method."""

from __future__ import annotations

import ast
import dataclasses
import pkgutil
import re
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, RecordDict

from fedsqueeze.deploy.inprocess import Federation, copy_recorddict
from fedsqueeze.strategies import channels, methods
from fedsqueeze.strategies.base import ClientSide, Method, SqueezeStrategy
from fedsqueeze.strategies.channel import channel_names, get_channel
from fedsqueeze.strategies.registry import get_method, method_names, register
from fedsqueeze.strategies.run_model import build_run_model
from fedsqueeze.strategies.settings import ConfigError, MethodConfig, RunSettings
from fedsqueeze.strategies.state import NodeMirrors, ServerState

ROOT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- boundaries
def _imports(path: Path) -> list[str]:
    """Absolute module names a file imports (relative imports resolved inside its package)."""
    package = {"server": "fedsqueeze.server", "client": "fedsqueeze.client",
               "codecs": "fedsqueeze.codecs", "strategies": "fedsqueeze.strategies",
               "channels": "fedsqueeze.strategies.channels",
               "methods": "fedsqueeze.strategies.methods"}
    base = package.get(path.parent.name, path.parent.name)
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                names.append(f"{base}.{node.module}" if node.module else base)
            else:
                names.append(node.module)
    return names


@pytest.mark.parametrize("folder", ["server", "client"])
def test_server_and_client_import_no_method_no_channel_and_no_codec(folder):
    for path in sorted((ROOT / folder).glob("*.py")):
        for name in _imports(path):
            assert not name.startswith("fedsqueeze.strategies.methods"), (path, name)
            assert not name.startswith("fedsqueeze.strategies.channels"), (path, name)
            assert not name.startswith("fedsqueeze.codecs"), (path, name)


def test_codecs_import_nothing_of_ours():
    for path in sorted((ROOT / "codecs").glob("*.py")):
        for name in _imports(path):
            if name.startswith("fedsqueeze"):
                assert name.startswith("fedsqueeze.codecs"), (path, name)


def test_no_method_or_channel_module_imports_another_method_or_channel():
    for folder in ("methods", "channels"):
        for path in sorted((ROOT / "strategies" / folder).glob("*.py")):
            for name in _imports(path):
                assert not name.startswith("fedsqueeze.strategies.methods"), (path, name)
                assert not name.startswith("fedsqueeze.strategies.channels"), (path, name)


def test_every_module_in_channels_is_discovered_and_registered():
    modules = {i.name for i in pkgutil.iter_modules(channels.__path__)}
    registered = {get_channel(n).__module__.rsplit(".", 1)[1] for n in channel_names()}
    assert modules == registered


# --------------------------------------------------------------------------- registry
def test_every_module_in_methods_is_discovered_and_registered():
    modules = {i.name for i in pkgutil.iter_modules(methods.__path__)}
    registered = {get_method(n).__module__.rsplit(".", 1)[1] for n in method_names()}
    assert modules == registered
    assert {"fedavg", "fedsparsify", "resfed", "normclip", "fedadam"} <= set(method_names())


@pytest.mark.parametrize("name", method_names())
def test_register_gives_the_config_its_prefix(name):
    method = get_method(name)
    assert method.name == name
    if method.Config is not MethodConfig:
        assert method.Config.prefix == name
        for field in dataclasses.fields(method.Config):
            assert method.Config().key(field.name).startswith(f"{name}.")


def test_a_bad_value_names_the_prefixed_key():
    with pytest.raises(ConfigError, match=r"'gwpf\.alpha' = 2"):
        get_method("gwpf")(RunSettings(), {"gwpf.alpha": 2})


def test_a_config_class_cannot_serve_two_methods():
    config = get_method("gwpf").Config

    class Twin(get_method("gwpf")):
        Config = config

    with pytest.raises(ValueError, match="already belongs to method 'gwpf'"):
        register("twin-of-gwpf")(Twin)
    assert "twin-of-gwpf" not in method_names()  # a refused registration leaves no trace


def test_a_method_without_keys_or_hooks_is_fedavg_over_the_dense_codec(client_round,
                                                                       flower_task):
    class Plain(Method):  # no config, no strategy, no client side of its own
        name = "plain"

    method = Plain(RunSettings(), {})
    model = build_run_model(method.settings)
    strategy, client = method.strategy(model), method.client()
    assert type(strategy) is SqueezeStrategy
    arrays = strategy.round_arrays
    content = strategy.encode_down(1, 5, arrays)
    received = client_round.receive(client, content, RecordDict(),
                                    build_run_model(RunSettings(seed=9)))
    back = strategy.decode_up(1, 5, client_round.send(client, received, RecordDict()))
    assert all(np.array_equal(back[k], arrays[k]) for k in arrays)


def test_the_core_attaches_the_round_config_and_refuses_a_method_config_record(flower_task):
    method = get_method("normclip")(RunSettings(), {})
    strategy = method.strategy(build_run_model(method.settings))
    (message,) = strategy._messages("norms", 4, [11], ConfigRecord({"lr": 0.5}))
    config = message.content.config_records["config"]
    assert (config["server-round"], config["exchange"], config["method"], config["lr"]) == (
        4, "norms", "normclip", 0.5)
    assert message.metadata.group_id == "4:norms"

    class Meddling(type(strategy)):
        def encode_down(self, server_round, node_id, arrays):
            return RecordDict({"config": ConfigRecord({"x": 1})})

    meddling = Meddling(method, build_run_model(method.settings))
    with pytest.raises(ValueError, match="must not carry a 'config' record"):
        meddling._messages("train", 1, [11], ConfigRecord())


def test_lr_decays_per_round():
    s = RunSettings(lr=0.01, lr_decay=0.999)
    assert s.lr_at(1) == 0.01 and s.lr_at(3) == pytest.approx(0.01 * 0.999 ** 2)
    with pytest.raises(ConfigError, match="lr-decay"):
        RunSettings(lr_decay=1.5)
    with pytest.raises(ConfigError, match="local-eval-every"):
        RunSettings(local_eval_every=2)  # no local test split


# --------------------------------------------------------------------------- local evaluation
def test_local_evaluation_every_k_rounds_beside_central_accuracy(tmp_path):
    fed = Federation({"num-server-rounds": 3, "num-partitions": 60, "local-test-fraction": 0.25,
                      "local-eval-every": 2, "local-eval-clients": 2}, clients=4,
                     results_dir=tmp_path)
    rows = fed.run(3)
    assert [("accuracy_local" in r) for r in rows] == [False, True, True]  # k = 2 and the last
    for r in rows[1:]:
        assert 0 <= r["accuracy_local_min"] <= r["accuracy_local"] <= 1
        assert r["local_evaluations"] == 2 and r["failed_local_evaluations"] == 0
        # measured apart: the evaluation's bytes are not in the round's training totals
        assert r["eval_message_down"] > 0 and r["message_down"] == rows[0]["message_down"]


def test_the_local_test_split_is_seeded_disjoint_and_off_at_zero():
    from fedsqueeze.client.runtime import local_test_split

    train, test = local_test_split(100, 0.2, seed=3, partition_id=1)
    assert len(test) == 20 and not set(train) & set(test) and len(train) + len(test) == 100
    again, _ = local_test_split(100, 0.2, seed=3, partition_id=1)
    other, _ = local_test_split(100, 0.2, seed=3, partition_id=2)
    assert np.array_equal(train, again) and not np.array_equal(train, other)
    assert local_test_split(100, 0.0, seed=3, partition_id=1)[1] is None


# --------------------------------------------------------------------------- exported state
def test_server_state_round_trips_through_npz_and_json_without_pickle(tmp_path):
    state = ServerState({"a": np.arange(5, dtype=np.float32), "m": np.ones((2, 3), bool)},
                        {"k": [1, 2], "tag": "ff"})
    state.save(tmp_path)
    back = ServerState.load(tmp_path)
    assert back.meta == state.meta
    assert all(np.array_equal(back.arrays[k], v) and back.arrays[k].dtype == v.dtype
               for k, v in state.arrays.items())
    with pytest.raises(ValueError):
        ServerState({"x": np.array([object()])}).save(tmp_path / "bad")  # object arrays: no


def test_node_mirrors_commit_only_what_was_decoded():
    nodes: NodeMirrors[int, str] = NodeMirrors()
    nodes.stage(1, "sent")
    nodes.commit(1, 10)
    nodes.stage(2, "sent")              # never committed: the reply was lost
    assert nodes.end_round() == [2] and nodes.get(1) == 10 and nodes.get(2) is None
    nodes.reset(1)                       # a synced client resynced
    nodes.reset(3)                       # a newcomer is not a resync
    assert nodes.resyncs == 1 and nodes.get(1) is None


@pytest.mark.parametrize("name,keys", [(n, {}) for n in method_names()] + [
    ("fedavg", {"uplink": "topk-ef", "downlink": "topk-ef"}),
    ("fedavg", {"uplink": "qsgd", "downlink": "qsgd", "qsgd.error-feedback": True}),
    ("fedavgm", {"uplink": "topk-ef", "downlink": "topk-ef"}),
    # seed 6 at half participation: both round-3 clients missed round 2 and catch up
    ("fedavg", {"uplink": "topk-ef", "downlink": "topk-ef", "fraction-train": 0.5, "seed": 6}),
    ("fedavg", {"uplink": "qsgd", "downlink": "qsgd", "fraction-train": 0.5, "seed": 6}),
    # q8 top-k, seed 2: the broadcast starts in q8; round 3's newcomer gets that start and
    # the catch-up from it
    ("fedavg", {"uplink": "topk-ef", "downlink": "topk-ef", "topk-ef.values": "q8",
                "fraction-train": 0.5, "seed": 2}),
    ("resfed", {"fraction-train": 0.5, "seed": 6})])
def test_exported_state_resumes_every_method_to_the_same_round(name, keys, tmp_path):
    """Run 3 rounds; separately, restore round 2's server state (through files), client states
    and global model into a fresh federation and run round 3: the same bytes, accuracy and
    global model."""
    overrides = {"method": name, "num-server-rounds": 3, "num-partitions": 60, "seed": 4,
                 "fraction-train": 0.75, "min-nodes": 1, **keys}
    fed = Federation(overrides, clients=4, results_dir=tmp_path / "a")
    fed.run(2)
    fed.strategy.export_state().save(tmp_path / "state")
    clients = {p: copy_recorddict(fed.state_of(p)) for p in range(4)}
    arrays = fed.arrays
    expected = fed.run_round()

    resumed = Federation(overrides, clients=4, results_dir=tmp_path / "b")
    resumed.strategy.import_state(ServerState.load(tmp_path / "state"))
    for p, state in clients.items():
        resumed.grid.contexts[resumed.grid.node_of(p)].state = state
    resumed.arrays, resumed.round = arrays, 2
    got = resumed.run_round()
    if keys.get("topk-ef.values") == "q8":
        assert expected["down_full_from_start"] == 1
    for key in ("accuracy", "payload_up", "payload_down", "nonzeros", "failed_replies",
                "down_catchup", "down_catchup_replay", "down_full_from_start"):
        assert got.get(key) == expected.get(key), key
    for key in fed.arrays.keys():
        assert np.array_equal(resumed.arrays[key].numpy(), fed.arrays[key].numpy()), key


def _documented(pattern: str, text: str) -> list[tuple[str, int]]:
    return [(name, len([p for p in params.split(",") if p.strip()]))
            for name, params in re.findall(pattern, text, flags=re.M)]


def test_the_package_docstring_signatures_match_the_code():
    import inspect

    import fedsqueeze.strategies as package

    doc = package.__doc__
    server, client = doc.split("Client side (`ClientSide`")
    hooks = _documented(r"^\s{4}(\w+)\(([^)]*)\)", server)
    hooks += _documented(r"^\s{4}\w+\([^)]*\) / (\w+)\(([^)]*)\)", server)
    calls = _documented(r"`(\w+)\(([^)]*)\)`", client)
    assert len(hooks) >= 13 and len(calls) >= 6
    for cls, documented in ((SqueezeStrategy, hooks), (ClientSide, calls)):
        for name, count in documented:
            params = [p for p in inspect.signature(getattr(cls, name)).parameters
                      if p != "self"]
            assert len(params) == count, f"{cls.__name__}.{name}{tuple(params)} vs docstring"
