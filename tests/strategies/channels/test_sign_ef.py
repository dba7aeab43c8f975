"""sign-ef: per tensor, the update's signs times its mean magnitude, with error feedback;
about one bit per entry; in run config as `uplink = "sign-ef"` without any other change."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import RecordDict

from fedsqueeze.codecs import CodecError, get_codec
from fedsqueeze.deploy.inprocess import Federation
from fedsqueeze.strategies.channels.sign_ef import SCALES_RECORD, SignEF
from fedsqueeze.strategies.payload import pack, payload_bytes

F = np.float32


def test_each_tensor_becomes_its_signs_times_its_mean_magnitude():
    update = [np.array([0.5, -1.5, 0.0, 2.0], F), np.array([[-3.0, 1.0]], F)]
    delivered = SignEF().encode(update).delivered()
    assert delivered[0].tolist() == [1.0, -1.0, -1.0, 1.0]   # mean |u| = 1; 0 counts as -
    assert delivered[1].tolist() == [[-2.0, 2.0]]
    decoded = SignEF().decode(RecordDict(SignEF().encode(update).records), [(4,), (1, 2)])
    assert all(np.array_equal(a, b) for a, b in zip(decoded, delivered))


def test_what_is_not_delivered_is_kept_exactly_over_five_rounds(channel_loop):
    channel_loop(SignEF(), None).assert_error_memory_is_exact(SignEF(), rounds=5)


def test_the_uplink_is_about_one_bit_per_entry(channel_loop):
    loop = channel_loop(SignEF(), None)
    exchange = loop.run_round()
    n = sum(a.size for a in exchange.before)
    assert n / 8 < payload_bytes(exchange.replies[0].content) <= 1.05 * n / 8 + 256


def test_negative_scales_are_refused():
    content = RecordDict(SignEF().encode([np.ones(8, F)]).records)
    content[SCALES_RECORD] = pack(get_codec("dense").stype,
                                  get_codec("dense").encode([-np.ones(1, F)], dtype="fp32"))
    with pytest.raises(CodecError, match="scales"):
        SignEF().decode(content, [(8,)])


def test_it_runs_as_a_run_config_channel_both_ways(tmp_path):
    fed = Federation({"method": "fedavg", "uplink": "sign-ef", "downlink": "sign-ef",
                      "num-server-rounds": 3, "num-partitions": 20, "partitioner": "iid"},
                     clients=3, results_dir=tmp_path)
    rows = fed.run(3)
    assert all(r["failed_replies"] == 0 for r in rows)
    assert rows[-1]["payload_up"] < 3 * 118_282 / 8 * 1.1 and rows[-1]["down_change"] == 3
    assert rows[-1]["accuracy"] > rows[0]["accuracy"]
