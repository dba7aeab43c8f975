"""FedPara and pFedPara on the contract: factors on the wire, pFedPara's local factors never
leaving the client, and the model transform under other methods."""

from __future__ import annotations

import numpy as np
import pytest

from fedsqueeze.deploy.inprocess import Federation
from fedsqueeze.models.fedpara import is_local_factor
from fedsqueeze.strategies.build import run_channels
from fedsqueeze.strategies.methods.pfedpara import STATE
from fedsqueeze.strategies.registry import get_method
from fedsqueeze.strategies.settings import ConfigError, RunSettings
from fedsqueeze.strategies.state import load_array_list

RUN = {"num-partitions": 3, "min-nodes": 2, "num-server-rounds": 2, "fedpara.gamma": 0.5}
FC2_FACTORS = 74_650          # fc2 at gamma 0.5: every parameter of the transformed model
FC2_LOCAL = 34 * (128 + 784) + 22 * (128 + 128) + 4 * (10 + 128)  # x2, y2 of 3 layers
HEADER_SLACK = 200            # codec framing per payload, bytes


def test_fedpara_sends_the_factors_and_nothing_else(tmp_path):
    fed = Federation({**RUN, "method": "fedpara"}, clients=3, results_dir=tmp_path)
    row = fed.run_round()
    assert not any(k.endswith("weight") for k in fed.arrays.keys())
    for direction in ("payload_up", "payload_down"):
        per_client = row[direction] / 3
        assert 4 * FC2_FACTORS <= per_client <= 4 * FC2_FACTORS + HEADER_SLACK


def test_fedpara_values_may_travel_as_fp16(tmp_path):
    fed = Federation({**RUN, "method": "fedpara", "dense.dtype": "fp16"}, clients=3,
                     results_dir=tmp_path)
    assert fed.run_round()["payload_up"] / 3 <= 2 * FC2_FACTORS + HEADER_SLACK


def test_pfedpara_uplink_carries_no_byte_of_a_local_factor(tmp_path):
    fed = Federation({**RUN, "method": "pfedpara", "local-test-fraction": 0.2,
                      "local-eval-every": 2}, clients=3, results_dir=tmp_path)
    server_local = {k: fed.arrays[k].numpy().copy() for k in fed.arrays.keys()
                    if is_local_factor(k)}
    rows = fed.run(2)
    shared = FC2_FACTORS - FC2_LOCAL
    for row in rows:
        for direction in ("payload_up", "payload_down"):
            assert 4 * shared <= row[direction] / 3 <= 4 * shared + HEADER_SLACK
    own = [load_array_list(fed.state_of(p), STATE)[0] for p in range(3)]
    assert not np.array_equal(own[0][0], own[1][0])          # personal factors diverged
    for key in fed.arrays.keys():                                # the server never got them
        if is_local_factor(key):
            np.testing.assert_array_equal(fed.arrays[key].numpy(), server_local[key])
    assert rows[-1]["local_evaluations"] == 3 and 0 < rows[-1]["accuracy_local"] <= 1


def test_a_method_that_needs_a_transform_refuses_another():
    settings = RunSettings(method="fedpara", model_transform="pfedpara")
    with pytest.raises(ConfigError, match="model-transform"):
        get_method("fedpara")(settings, {})


@pytest.mark.parametrize("method,keys,message", [
    ("resfed", {"model-transform": "pfedpara"}, "only method 'pfedpara' keeps the local"),
    ("pfedpara", {"downlink": "topk-ef"}, "sends part of the model"),
])
def test_compositions_that_cannot_combine_are_refused_with_the_reason(method, keys, message):
    run_config = {"method": method, **keys}
    settings = RunSettings.from_run_config(run_config)
    with pytest.raises(ConfigError, match=message):
        run_channels(get_method(method)(settings, run_config), run_config)


@pytest.mark.parametrize("method", ["fedsparsify", "resfed", "gwpf", "feddst"])
def test_the_transform_composes_with_other_methods_and_shrinks_their_bytes(tmp_path, method):
    plain = Federation({**RUN, "method": method}, clients=3, results_dir=tmp_path / "plain")
    para = Federation({**RUN, "method": method, "model-transform": "fedpara"}, clients=3,
                      results_dir=tmp_path / "para")
    assert any(is_local_factor(k) for k in para.arrays.keys())  # the factors travel
    a, b = plain.run_round(), para.run_round()
    assert b["failed_replies"] == 0, b["failures"]
    assert b["payload_up"] < a["payload_up"] and b["payload_down"] < a["payload_down"]
