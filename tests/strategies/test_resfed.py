"""ResFed: predictors, quantizers, payload bounds, and client/server reconstructions that stay
bit-identical over many rounds (one process, a simulated client restart, partial
participation, failures, malformed payloads). No Flower run: the strategy's per-node verbs and
the client side are driven directly, exactly as the ServerApp and ClientApp call them."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, MetricRecord, RecordDict
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
from torch import nn

from fedsqueeze.codecs import CodecError
from fedsqueeze.codecs.bounds import entropy_bits, log2_binom
from fedsqueeze.strategies.payload import METRICS_RECORD, PAYLOAD_RECORD, pack, unpack
from fedsqueeze.strategies.registry import get_method
from fedsqueeze.strategies.resfed import History, flatten, load_history, unflatten
from fedsqueeze.strategies.resfed_coding import (
    CODEC,
    Header,
    median_quantize,
    predict,
    reconstruct,
    top_k,
)
from fedsqueeze.strategies.sampling import ClientDirectory
from fedsqueeze.strategies.settings import ConfigError, RunSettings
from fedsqueeze.strategies.tensors import load_arrays, model_arrays, to_arrayrecord

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
    assert top_k(r, 0.6).tolist() == [1, 3]
    assert top_k(r, 0.99).tolist() == [1]


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
    header = Header(True, False, "median", 3, bytes(8), [bytes(8), bytes(8)])
    payload = CODEC.encode_residual(r, header, sparsity=s, qe=qe, bits=4)
    d = CODEC.decode(payload, [(n,)])
    k = d.k
    core = (log2_binom(n, k) + entropy_bits(d.symbols)) / 8
    assert len(payload) <= 1.15 * (core + d.codebook_bytes + d.header_bytes)
    assert abs(d.bound() - (core + d.codebook_bytes + d.header_bytes)) < 1e-6
    if s >= 0.95 and qe == 1:
        assert 4 * n / len(payload) >= 100


# --------------------------------------------------------------------------- protocol
def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 10), nn.BatchNorm1d(10), nn.ReLU(), nn.Linear(10, 3))


class Federation:
    """A ResFed server strategy and client states, driven like the ServerApp/ClientApp do."""

    def __init__(self, config: dict, clients: int = 4, fraction: float = 1.0, seed: int = 0):
        settings = RunSettings(fraction_train=fraction, min_nodes=1, seed=seed)
        self.method = get_method("resfed")(settings, config)
        self.strategy = self.method.server(tiny_model())
        self.strategy.directory = ClientDirectory({1000 + p: p for p in range(clients)})
        self.states = {p: RecordDict() for p in range(clients)}
        self.global_vec = flatten(list(model_arrays(tiny_model()).values()))
        self.shapes = self.strategy.shapes
        self.participation = {p: 0 for p in range(clients)}
        self.fraction = fraction
        self.seed = seed

    def arrays(self):
        return to_arrayrecord(OrderedDict(zip(self.strategy.keys,
                                              unflatten(self.global_vec, self.shapes))))

    def round(self, rnd: int, fail: frozenset = frozenset(), drop_reply: frozenset = frozenset()):
        st = self.strategy
        st.begin_round()
        nodes = st.directory.sample(rnd, self.fraction, 1, self.seed)
        rng = np.random.default_rng([rnd, 7])
        updates = []
        for node in nodes:
            p = st.directory.partition_of(node)
            content = st.encode_down(rnd, node, self.arrays(), ConfigRecord({"server-round": rnd}))
            if p in fail:
                continue  # the ClientApp raised: Flower discards its state changes
            side = self.method.client()  # a fresh client side per message, like the ClientApp
            model = tiny_model()
            side.receive(content, self.states[p], model)
            trained = [a + F(0.05) * rng.standard_normal(a.shape).astype(F)
                       for a in model_arrays(model).values()]
            load_arrays(model, trained)
            reply = side.send(model, self.states[p])
            reply[METRICS_RECORD] = MetricRecord({"num-examples": 10})
            if p in drop_reply:
                continue  # the client committed, the reply never arrived
            l_hat = flatten([a.numpy() for a in st.decode_up(rnd, node, reply).values()])
            updates.append(l_hat)
            self.participation[p] += 1
        st.end_round()
        if updates:
            self.global_vec = np.mean(np.stack(updates), axis=0, dtype=F).astype(F)
        return st.round_metrics(rnd), [st.directory.partition_of(n) for n in nodes]

    def assert_in_sync(self):
        for p, (mirror, _) in self.strategy.mirrors.items():
            mine = load_history(self.states[p])
            assert mine.version == mirror.version
            for a, b in zip(mine.g + mine.l, mirror.g + mirror.l, strict=True):
                assert a.dtype == b.dtype == F and a.tobytes() == b.tobytes()


CONFIGS = [
    {"resfed.predictor": "linear", "resfed.quantizer": "median", "resfed.qe": 1,
     "resfed.sparsity-up": 0.9, "resfed.sparsity-down": 0.8},
    {"resfed.predictor": "half_drift", "resfed.quantizer": "uniform", "resfed.bits": 3,
     "resfed.sparsity-up": 0.5, "resfed.sparsity-down": 0.7},
    {"resfed.predictor": "zero", "resfed.quantizer": "fp16", "resfed.sparsity-up": 0.95,
     "resfed.sparsity-down": 0.99},
    {"resfed.predictor": "linear", "resfed.quantizer": "median", "resfed.qe": 3,
     "resfed.sparsity-up": 0.0, "resfed.sparsity-down": 0.3, "resfed.warmup": 2},
]


@pytest.mark.parametrize("config", CONFIGS, ids=["linear-median", "half-uniform", "zero-fp16",
                                                 "linear-qe3-warm2"])
def test_reconstructions_are_bit_identical_over_20_rounds(config):
    fed = Federation(config)
    for rnd in range(1, 21):
        row, _ = fed.round(rnd)
        assert row["reconstruction_gap"] == 0 and row["resfed_version_mismatch"] == 0
        fed.assert_in_sync()
        warm = int(config.get("resfed.warmup", 1))
        assert row["resfed_down_full"] == (4 if rnd <= warm else 0)
        assert row["resfed_up_full"] == (4 if rnd <= warm else 0)
    assert all(len(load_history(s).g) == 3 for s in fed.states.values())


def test_a_restarted_client_process_continues_from_context_state_alone():
    fed = Federation(CONFIGS[0])
    for rnd in range(1, 11):
        fed.round(rnd)
    # a new process: the state comes back only from its serialized form
    fed.states = {p: recorddict_from_proto(recorddict_to_proto(s)) for p, s in fed.states.items()}
    for rnd in range(11, 21):
        row, _ = fed.round(rnd)
        assert row["reconstruction_gap"] == 0 and row["resfed_down_full"] == 0
        fed.assert_in_sync()


def test_partial_participation_stays_in_sync_without_full_transfers():
    fed = Federation(CONFIGS[0], clients=6, fraction=0.5)
    skipped = set()
    for rnd in range(1, 21):
        row, chosen = fed.round(rnd)
        assert len(chosen) == 3 and row["reconstruction_gap"] == 0
        skipped |= set(range(6)) - set(chosen)
        fed.assert_in_sync()
        assert row["resfed_resyncs"] == 0
    assert skipped == set(range(6))
    assert all(load_history(s).count == fed.participation[p] for p, s in fed.states.items())


def test_max_gap_forces_a_full_transfer_after_a_long_absence():
    fed = Federation({**CONFIGS[0], "resfed.max-gap": 1}, clients=6, fraction=0.5)
    fulls = 0
    for rnd in range(1, 16):
        row, _ = fed.round(rnd)
        fed.assert_in_sync()
        fulls += row["resfed_down_full"] - row["resfed_resyncs"] * 0
    assert fulls > 6  # first contacts plus gap resets


@pytest.mark.parametrize("kind", ["fail", "drop_reply"])
def test_a_failed_round_resets_that_client_with_a_full_transfer(kind):
    fed = Federation(CONFIGS[0])
    for rnd in range(1, 5):
        fed.round(rnd)
    fed.round(5, **{kind: frozenset({2})})
    assert 2 not in fed.strategy.mirrors
    row, _ = fed.round(6)
    assert row["resfed_resyncs"] == 1 and row["resfed_down_full"] == 1
    assert row["reconstruction_gap"] == 0
    fed.assert_in_sync()
    for rnd in range(7, 10):
        row, _ = fed.round(rnd)
        assert row["resfed_down_full"] == 0
        fed.assert_in_sync()


def _down_content(fed, rnd, partition):
    fed.strategy.begin_round()
    return fed.strategy.encode_down(rnd, 1000 + partition, fed.arrays(),
                                    ConfigRecord({"server-round": rnd}))


@pytest.mark.parametrize("mangle", [
    lambda b: b[:-1],
    lambda b: b + b"\0",
    lambda b: b[:7],
    lambda b: b[:5] + bytes([b[5] ^ 0xFF]) + b[6:],
    lambda b: b[:-3] + bytes(x ^ 0x5A for x in b[-3:]),
], ids=["truncated", "trailing", "header-only", "tensor-count", "tail-bits"])
def test_malformed_residual_payload_is_rejected_and_state_untouched(mangle):
    fed = Federation(CONFIGS[0])
    for rnd in range(1, 4):
        fed.round(rnd)
    content = _down_content(fed, 4, 1)
    payload = unpack(content, CODEC.stype)
    assert CODEC.decode(payload, [(fed.strategy.n,)]).header.residual
    before = recorddict_to_proto(fed.states[1]).SerializeToString()
    bad = RecordDict({PAYLOAD_RECORD: pack(CODEC.stype, mangle(payload)),
                      "config": ConfigRecord({"server-round": 4})})
    try:
        fed.method.client().receive(bad, fed.states[1], tiny_model())
    except CodecError:
        pass
    else:  # a flip that still decodes must at least not have touched the state
        pass
    assert recorddict_to_proto(fed.states[1]).SerializeToString() == before
    with pytest.raises(CodecError):
        fed.method.client().receive(RecordDict({PAYLOAD_RECORD: pack(CODEC.stype, payload[:-1])}),
                                    fed.states[1], tiny_model())


def test_a_payload_for_another_history_version_is_rejected():
    fed = Federation(CONFIGS[0])
    for rnd in range(1, 4):
        fed.round(rnd)
    content = _down_content(fed, 4, 1)
    with pytest.raises(CodecError, match="history version"):
        fed.method.client().receive(content, fed.states[2], tiny_model())
    with pytest.raises(CodecError, match="history version"):
        fed.method.client().receive(content, RecordDict(), tiny_model())  # state lost


def test_an_upload_against_a_stale_mirror_is_rejected_and_not_committed():
    fed = Federation(CONFIGS[0])
    for rnd in range(1, 4):
        fed.round(rnd)
    st = fed.strategy
    content = _down_content(fed, 4, 0)
    side = fed.method.client()
    model = side.receive(content, fed.states[0], tiny_model())
    reply = side.send(model, fed.states[0])
    reply[METRICS_RECORD] = MetricRecord({"num-examples": 1})
    stale = History()
    st.pending[0].history = stale
    with pytest.raises(CodecError, match="history version"):
        st.decode_up(4, 1000, reply)
    assert st.stats["mismatch"] == 1 and st.mirrors[0][0].count == 3


def test_the_reconstructions_clients_train_from_are_offered_for_evaluation():
    from fedsqueeze.strategies.resfed import EVALUATED_RECONSTRUCTIONS

    fed = Federation(CONFIGS[0], clients=5)
    for rnd in (1, 2, 3):
        _, partitions = fed.round(rnd)
    models = fed.strategy.models_to_evaluate(3)["reconstructed"]
    assert len(models) == EVALUATED_RECONSTRUCTIONS < len(partitions)
    for model, p in zip(models, partitions):
        assert list(model) == fed.strategy.keys
        received = load_history(fed.states[p]).g[-1]  # the G^ client p trained from in round 3
        assert flatten(list(model.values())).tobytes() == received.tobytes()


def test_config_is_validated():
    with pytest.raises(ConfigError, match="resfed.sparsity-up"):
        get_method("resfed")(RunSettings(), {"resfed.sparsity-up": 1.0})
    with pytest.raises(ConfigError, match="resfed.predictor"):
        get_method("resfed")(RunSettings(), {"resfed.predictor": "cubic"})
    with pytest.raises(ConfigError, match="resfed.qe"):
        get_method("resfed")(RunSettings(), {"resfed.qe": 9})


def test_reconstruct_only_touches_the_coded_positions():
    p = np.array([1.0, -0.0, 2.0], F)
    out = reconstruct(p, np.array([2]), np.array([0.5], F))
    assert out.tobytes() == np.array([1.0, -0.0, 2.5], F).tobytes()


@pytest.mark.simulation
def test_two_round_simulation_runs_residuals_with_zero_gap(tmp_path):
    from fedsqueeze.deploy.config_check import find_app_dir
    from fedsqueeze.deploy.simulate import simulate
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


def test_without_sparsification_or_quantization_resfed_is_fedavg_up_to_rounding():
    fed = Federation({"resfed.sparsity-up": 0.0, "resfed.sparsity-down": 0.0,
                      "resfed.quantizer": "fp32", "resfed.predictor": "linear"})
    for rnd in range(1, 8):
        fed.round(rnd)
        st = fed.strategy
        for p, (mirror, _) in st.mirrors.items():
            # G^ = P + (G - P) in float32: within a few ulps of the exact global model
            assert np.allclose(mirror.g[-1], load_history(fed.states[p]).g[-1], rtol=0, atol=0)
    assert fed.strategy.round_metrics(7)["resfed_down_rel_error"] < 1e-6
