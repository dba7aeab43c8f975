"""ResFed: predictors, quantizers, payload bounds, and client/server reconstructions that stay
bit-identical over many rounds (a simulated client restart, partial participation, failures,
malformed payloads), through the in-process federation (the real ClientApp and round loop)."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import RecordDict
from flwr.common.serde import recorddict_to_proto

from fedsqueeze.codecs import CodecError, ResidualHeader, get_codec, median_quantize
from fedsqueeze.codecs.bounds import entropy_bits, log2_binom
from fedsqueeze.deploy.inprocess import Federation
from fedsqueeze.strategies.build import run_channels
from fedsqueeze.strategies.channels.residual import (
    EVALUATED_RECONSTRUCTIONS,
    History,
    load_history,
    predict,
    reconstruct,
)
from fedsqueeze.strategies.payload import PAYLOAD_RECORD, pack, unpack
from fedsqueeze.strategies.registry import get_method
from fedsqueeze.strategies.settings import ConfigError, RunSettings
from fedsqueeze.strategies.tensors import (
    flatten,
    from_arrayrecord,
    top_k_count,
    top_k_indices,
)

CODEC = get_codec("residual")
F = np.float32


# --------------------------------------------------------------------------- predictors
def v(*xs):
    return [np.array([x], dtype=F) for x in xs]


def test_zero_predictor_repeats_the_last_element():
    p, rule = predict(v(1.0, 2.0, 3.0), v(10.0, 20.0, 40.0), "zero")
    assert rule == "zero" and p.tolist() == [3.0]


def test_half_drift_adds_half_the_last_step_of_the_other_trajectory():
    p, rule = predict(v(1.0, 3.0), v(10.0, 20.0, 40.0), "half_drift")
    assert rule == "half_drift" and p.tolist() == [3.0 + 0.5 * (40.0 - 20.0)]


def test_linear_extrapolates_the_offset_between_trajectories():
    # O[-1] + 2 (S[-1] - O[-2]) - (S[-2] - O[-3])
    s, o = v(5.0, 7.0), v(1.0, 2.0, 4.0)
    p, rule = predict(s, o, "linear")
    assert rule == "linear" and p.tolist() == [4.0 + 2 * (7.0 - 2.0) - (5.0 - 1.0)]
    # a local model moving by a constant update on a linearly moving global: exact
    g = [np.array([t * 1.0], F) for t in range(4)]          # G_1..G_4
    loc = [np.array([t * 1.0 + 0.5], F) for t in range(3)]  # L_t = G_t + 0.5
    p, _ = predict(loc, g, "linear")
    assert p.tolist() == [3.5]


def test_short_histories_fall_back_and_an_empty_one_needs_a_full_transfer():
    assert predict(v(1.0, 2.0), v(1.0, 2.0), "linear")[1] == "half_drift"
    assert predict(v(1.0), v(5.0), "linear")[1] == "zero"
    assert predict(v(1.0), v(5.0), "half_drift")[1] == "zero"
    p, rule = predict([], v(5.0), "linear")
    assert p is None and rule == "none"


def test_prediction_does_not_alias_the_history():
    s = v(1.0)
    p, _ = predict(s, [], "zero")
    p[0] = 99.0
    assert s[0][0] == 1.0


# --------------------------------------------------------------------------- compression
def test_top_k_is_global_and_keeps_at_least_one():
    r = np.array([0.1, -5.0, 0.2, 3.0, -0.3], F)
    assert top_k_indices(r, top_k_count(r.size, 0.6)).tolist() == [1, 3]
    assert top_k_indices(r, top_k_count(r.size, 0.99)).tolist() == [1]


def test_median_quantizer_drops_below_median_and_is_ternary_at_qe1():
    kept = np.array([-4.0, -2.0, -1.0, 0.5, 1.0, 3.0, 5.0, 8.0], F)
    keep, sym, book = median_quantize(kept, 1)
    # median |x| of the 8 survivors (lower median) = 2.0: |x| >= 2 stay
    assert kept[keep].tolist() == [-4.0, -2.0, 3.0, 5.0, 8.0]
    assert book.tolist() == [-4.0, 5.0]        # lower medians of each sign
    assert book[sym].tolist() == [-4.0, -4.0, 5.0, 5.0, 5.0]


def test_median_quantizer_qe2_has_two_levels_per_sign():
    kept = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, -1.0, -9.0], F)
    keep, sym, book = median_quantize(kept, 2)
    assert book.size == 4 and set(sym.tolist()) <= {0, 1, 2, 3}
    x = kept[keep]
    # |x| lower median 4 keeps 4..8 and -9; positives split at 6: {4,5,6} -> 5, {7,8} -> 7
    assert book[sym][x > 0].tolist() == [5.0, 5.0, 5.0, 7.0, 7.0]
    assert book[sym][x < 0].tolist() == [-9.0]


@pytest.mark.parametrize("s,qe", [(0.95, 1), (0.99, 1), (0.95, 2)])
def test_residual_payload_is_within_15_percent_of_the_bound(s, qe):
    n = 118_282  # fc2
    rng = np.random.default_rng(0)
    r = rng.standard_normal(n).astype(F) * F(0.01)
    header = ResidualHeader(True, False, "median", 3, bytes(8), [bytes(8), bytes(8)])
    idx = top_k_indices(r, top_k_count(n, s))
    payload = CODEC.encode_residual(n, idx, r[idx], header, qe=qe, bits=4)
    d = CODEC.decode(payload, [(n,)])
    k = d.k
    core = (log2_binom(n, k) + entropy_bits(d.symbols)) / 8
    assert len(payload) <= 1.15 * (core + d.codebook_bytes + d.header_bytes)
    assert abs(d.bound() - (core + d.codebook_bytes + d.header_bytes)) < 1e-6
    if s >= 0.95 and qe == 1:
        assert 4 * n / len(payload) >= 100


# --------------------------------------------------------------------------- protocol
# Whole rounds through the shared in-process federation (the real ClientApp and round loop):
# fc2 on small FashionMNIST partitions, central evaluation only at the end.
def federation(tmp_path, config: dict, clients: int = 4, rounds: int = 20, **run) -> Federation:
    return Federation({"method": "resfed", "num-server-rounds": rounds, "num-partitions": 60,
                       "eval-every": rounds, "min-nodes": 1, "seed": 0, **run, **config},
                      clients=clients, results_dir=tmp_path)


def assert_in_sync(fed: Federation) -> None:
    for p, (mirror, _) in fed.strategy.link.nodes.mirrors.items():
        mine = load_history(fed.state_of(p))
        assert mine.version == mirror.version
        for a, b in zip(mine.g + mine.l, mirror.g + mirror.l, strict=True):
            assert a.dtype == b.dtype == F and a.tobytes() == b.tobytes()


CONFIGS = [
    {"residual.predictor": "linear", "residual.quantizer": "median", "residual.qe": 1,
     "residual.sparsity-up": 0.9, "residual.sparsity-down": 0.8},
    {"residual.predictor": "half_drift", "residual.quantizer": "uniform", "residual.bits": 3,
     "residual.sparsity-up": 0.5, "residual.sparsity-down": 0.7},
    {"residual.predictor": "zero", "residual.quantizer": "fp16", "residual.sparsity-up": 0.95,
     "residual.sparsity-down": 0.99},
    {"residual.predictor": "linear", "residual.quantizer": "median", "residual.qe": 3,
     "residual.sparsity-up": 0.0, "residual.sparsity-down": 0.3, "residual.warmup": 2},
]


@pytest.mark.parametrize("config", CONFIGS, ids=["linear-median", "half-uniform", "zero-fp16",
                                                 "linear-qe3-warm2"])
def test_reconstructions_are_bit_identical_over_20_rounds(config, tmp_path):
    fed = federation(tmp_path, config)
    for rnd in range(1, 21):
        row = fed.run_round()
        assert row["reconstruction_gap"] == 0 and row["resfed_version_mismatch"] == 0
        assert row["failed_replies"] == 0
        assert_in_sync(fed)
        warm = int(config.get("residual.warmup", 1))
        assert row["resfed_down_full"] == (4 if rnd <= warm else 0)
        assert row["resfed_up_full"] == (4 if rnd <= warm else 0)
    assert all(len(load_history(fed.state_of(p)).g) == 3 for p in range(4))


def test_a_restarted_client_process_continues_from_context_state_alone(tmp_path):
    fed = federation(tmp_path, CONFIGS[0])
    fed.run(10)
    fed.restart_clients()  # a new process: the state comes back only from its serialized form
    for _ in range(11, 21):
        row = fed.run_round()
        assert row["reconstruction_gap"] == 0 and row["resfed_down_full"] == 0
        assert_in_sync(fed)


def test_partial_participation_stays_in_sync_without_full_transfers(tmp_path):
    fed = federation(tmp_path, CONFIGS[0], clients=6, **{"fraction-train": 0.5})
    skipped, participation = set(), {p: 0 for p in range(6)}
    for _ in range(1, 21):
        row = fed.run_round()
        chosen = row["clients"]
        assert len(chosen) == 3 and row["reconstruction_gap"] == 0
        skipped |= set(range(6)) - set(chosen)
        for p in chosen:
            participation[p] += 1
        assert_in_sync(fed)
        assert row["resfed_resyncs"] == 0
    assert skipped == set(range(6))
    assert all(load_history(fed.state_of(p)).count == participation[p] for p in range(6))


def test_max_gap_forces_a_full_transfer_after_a_long_absence(tmp_path):
    fed = federation(tmp_path, {**CONFIGS[0], "residual.max-gap": 1}, clients=6, rounds=15,
                     **{"fraction-train": 0.5})
    fulls = 0
    for _ in range(1, 16):
        row = fed.run_round()
        assert_in_sync(fed)
        fulls += row["resfed_down_full"]
    assert fulls > 6  # first contacts plus gap resets


@pytest.mark.parametrize("kind", ["fail", "drop_reply"])
def test_a_failed_round_resets_that_client_with_a_full_transfer(kind, tmp_path):
    fed = federation(tmp_path, CONFIGS[0], rounds=9)
    fed.run(4)
    node = fed.grid.node_of(2)
    if kind == "fail":  # the ClientApp raised: Flower discards its state changes
        fed.grid.fail = {2}
    else:  # the client committed, the reply never arrived
        fed.grid.tamper = lambda reply: None if reply.metadata.src_node_id == node else reply
    row = fed.run_round()
    assert row["failed_replies"] == 1 and 2 not in fed.strategy.link.nodes.mirrors
    fed.grid.fail, fed.grid.tamper = set(), None
    row = fed.run_round()
    assert row["resfed_resyncs"] == 1 and row["resfed_down_full"] == 1
    assert row["reconstruction_gap"] == 0
    assert_in_sync(fed)
    for _ in range(7, 10):
        row = fed.run_round()
        assert row["resfed_down_full"] == 0
        assert_in_sync(fed)


def _shapes(fed: Federation) -> list[tuple[int, ...]]:
    return [a.shape for a in from_arrayrecord(fed.arrays).values()]


def _down_content(fed: Federation, rnd: int, partition: int) -> RecordDict:
    """The server's down message for a partition in round `rnd` (its link codes it)."""
    fed.strategy.link.begin_round()
    records, _ = fed.strategy.link.encode(rnd, partition,
                                          list(from_arrayrecord(fed.arrays).values()))
    return RecordDict(records)


def _receive(fed: Federation, content: RecordDict, state: RecordDict):
    return fed.strategy.downlink.receive(content, state, _shapes(fed))


@pytest.mark.parametrize("mangle", [
    lambda b: b[:-1],
    lambda b: b + b"\0",
    lambda b: b[:7],
    lambda b: b[:5] + bytes([b[5] ^ 0xFF]) + b[6:],
    lambda b: b[:-3] + bytes(x ^ 0x5A for x in b[-3:]),
], ids=["truncated", "trailing", "header-only", "tensor-count", "tail-bits"])
def test_malformed_residual_payload_is_rejected_and_state_untouched(mangle, tmp_path):
    fed = federation(tmp_path, CONFIGS[0], rounds=4)
    fed.run(3)
    content = _down_content(fed, 4, 1)
    payload = unpack(content, CODEC.stype)
    assert CODEC.decode(payload, [(fed.strategy.link.n,)]).header.residual
    before = recorddict_to_proto(fed.state_of(1)).SerializeToString()
    bad = RecordDict({PAYLOAD_RECORD: pack(CODEC.stype, mangle(payload))})
    try:
        _receive(fed, bad, fed.state_of(1))
    except CodecError:
        pass
    else:  # a flip that still decodes must at least not have touched the state
        pass
    assert recorddict_to_proto(fed.state_of(1)).SerializeToString() == before
    with pytest.raises(CodecError):
        _receive(fed, RecordDict({PAYLOAD_RECORD: pack(CODEC.stype, payload[:-1])}),
                 fed.state_of(1))


def test_a_payload_for_another_history_version_is_rejected(tmp_path):
    fed = federation(tmp_path, CONFIGS[0], rounds=4)
    fed.run(3)
    content = _down_content(fed, 4, 1)
    with pytest.raises(CodecError, match="history version"):
        _receive(fed, content, fed.state_of(2))
    with pytest.raises(CodecError, match="history version"):
        _receive(fed, content, RecordDict())  # state lost


def test_an_upload_against_a_stale_mirror_is_rejected_and_not_committed(tmp_path):
    fed = federation(tmp_path, CONFIGS[0], rounds=4)
    fed.run(3)
    link = fed.strategy.link
    content = _down_content(fed, 4, 0)
    arrays, pending = _receive(fed, content, fed.state_of(0))
    reply = RecordDict(fed.strategy.downlink.reply(arrays, pending, fed.state_of(0)))
    link.nodes.pending[0].history = History()
    with pytest.raises(CodecError, match="history version"):
        link.decode(4, 0, reply, _shapes(fed))
    assert link.stats["mismatch"] == 1 and link.nodes.mirrors[0][0].count == 3


def test_the_reconstructions_clients_train_from_are_offered_for_evaluation(tmp_path):
    fed = federation(tmp_path, CONFIGS[0], clients=5, rounds=3)
    row = fed.run(3)[-1]
    models = fed.strategy.models_to_evaluate(3)["reconstructed"]
    assert len(models) == EVALUATED_RECONSTRUCTIONS < len(row["clients"])
    for model, p in zip(models, row["clients"]):
        assert list(model) == list(fed.arrays.keys())
        received = load_history(fed.state_of(p)).g[-1]  # the G^ client p trained from
        assert flatten(list(model.values())).tobytes() == received.tobytes()
    assert 0 <= row["accuracy_reconstructed_min"] <= row["accuracy_reconstructed"] <= 1


def test_config_is_validated():
    for keys, key in (({"residual.sparsity-up": 1.0}, "residual.sparsity-up"),
                      ({"residual.predictor": "cubic"}, "residual.predictor"),
                      ({"residual.qe": 9}, "residual.qe")):
        with pytest.raises(ConfigError, match=key):
            run_channels(get_method("resfed")(RunSettings(), keys), keys)
    with pytest.raises(ConfigError, match="codes both directions"):
        keys = {"uplink": "topk-ef"}
        run_channels(get_method("resfed")(RunSettings(), keys), keys)


def test_reconstruct_only_touches_the_coded_positions():
    p = np.array([1.0, -0.0, 2.0], F)
    out = reconstruct(p, np.array([2]), np.array([0.5], F))
    assert out.tobytes() == np.array([1.0, -0.0, 2.5], F).tobytes()


@pytest.mark.simulation
def test_two_round_simulation_runs_residuals_with_zero_gap(tmp_path):
    from fedsqueeze.deploy.config_check import find_app_dir
    from fedsqueeze.deploy.launch.simulate import simulate
    from fedsqueeze.server.results import read_run

    run_config = {"results-dir": str(tmp_path), "run-name": "resfed", "engine": "simulation",
                  "method": "resfed", "partitioner": "iid", "round-timeout": 120.0,
                  "num-server-rounds": 2, "fraction-train": 0.67, "min-nodes": 2}
    result = simulate(find_app_dir(), run_config, tmp_path / "resfed", clients=3,
                      cpus_per_client=1, gpus_per_client=0.0, echo=False)
    assert result.succeeded, result.status
    _, rounds, _ = read_run(result.results_dir)
    assert [r["reconstruction_gap"] for r in rounds] == [0, 0]
    assert all(r["failed_replies"] == 0 for r in rounds)
    assert rounds[0]["resfed_down_full"] == 2 and rounds[0]["resfed_down_residual"] == 0
    # round 2: clients seen in round 1 get residuals, a newcomer a full model
    assert rounds[1]["resfed_down_residual"] + rounds[1]["resfed_down_full"] == 2
    assert rounds[1]["resfed_down_residual"] >= 1
    for r in rounds:  # the lossy G^ clients trained from, evaluated beside the exact model
        assert 0.0 <= r["accuracy_reconstructed_min"] <= r["accuracy_reconstructed"] <= 1.0


def test_without_sparsification_or_quantization_resfed_is_fedavg_up_to_rounding(tmp_path):
    fed = federation(tmp_path, {"residual.sparsity-up": 0.0, "residual.sparsity-down": 0.0,
                                "residual.quantizer": "fp32", "residual.predictor": "linear"},
                     rounds=7)
    for _ in range(1, 8):
        row = fed.run_round()
        for p, (mirror, _) in fed.strategy.link.nodes.mirrors.items():
            # G^ = P + (G - P) in float32: the client holds exactly the server's G^
            assert np.array_equal(mirror.g[-1], load_history(fed.state_of(p)).g[-1])
    assert row["resfed_down_rel_error"] < 1e-6
