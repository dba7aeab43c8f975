"""ResFed (Song et al., arXiv 2212.05602): residuals against shared predictors, both directions.

Both ends keep the same history of *reconstructed* models per client - the global models the
client reconstructed (G^) and the local models the server reconstructed (L^) - and apply ONE
prediction rule (resfed_coding.predict, numpy float32, fixed operation order), so only the
residual (actual - predicted), sparsified (global top-k) and quantized, travels:

* down (unicast, per client): full model while the client has fewer than `warmup` synced
  rounds, else r = C(G - predict(G^hist, L^hist)); the client trains from G^ = P + r^;
* up: full model while warming up, else r = C(L - predict(L^hist, G^hist + [G^])).

State. The client's histories live in `context.state` (ArrayRecord "resfed.history", flat
float32 vectors, and ConfigRecord "resfed.version"); the server mirrors them per *partition id*
(node ids change when a SuperNode restarts). Histories are keyed by the client's own
participation (rounds it skipped are not in them), depth 3 (what `linear` reads). A history
version is (synced rounds since the last reset, 8-byte digest of the last G^ and L^); every
payload names the version it was encoded against. The client commits G^ and L^ only in `send`
(Flower discards state changes when the handler raises); the server commits only after it
decoded the reply and the client's digests of G^ and L^ match its own (else the reply is
rejected and `reconstruction_gap` counts it). A client whose round failed in any way (error
reply, undecodable reply, no reply) is reset: its next participation is a full transfer
(counted in `resfed_resyncs`). Every travelling state-dict entry is coded (BatchNorm running
statistics included, as in the reference; `num_batches_tracked` does not travel).
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict
from torch import nn

from fedsqueeze.codecs import CodecError

from .base import ClientSide, Method, SqueezeStrategy
from .payload import METRICS_RECORD, PAYLOAD_RECORD, pack, unpack
from .registry import register
from .resfed_coding import (
    CODEC,
    PREDICTORS,
    QUANTIZERS,
    Decoded,
    Header,
    digest,
    predict,
    reconstruct,
)
from .settings import check_all, check_choice
from .tensors import expected_shapes, load_arrays, model_arrays, to_arrayrecord

HISTORY_DEPTH = 3  # linear reads S[-2] and O[-3]
HISTORY_RECORD = "resfed.history"
VERSION_RECORD = "resfed.version"
EMPTY_TAG = bytes(8)
# how many clients' G^ per round are evaluated centrally (each costs one test-set pass)
EVALUATED_RECONSTRUCTIONS = 3


@dataclasses.dataclass(frozen=True)
class ResFedConfig:
    predictor: str = "half_drift"  # zero, half_drift, linear
    sparsity_up: float = 0.95      # fraction of residual entries dropped (global top-k)
    sparsity_down: float = 0.95
    quantizer: str = "median"      # median (reference, qe levels), uniform (bits), fp32, fp16
    qe: int = 1
    bits: int = 4
    warmup: int = 1                # synced rounds sent as full models after a (re)start
    max_gap: int = 0               # reset a client absent for more rounds than this; 0 = never

    def __post_init__(self) -> None:
        check_choice("resfed.predictor", self.predictor, PREDICTORS)
        check_choice("resfed.quantizer", self.quantizer, QUANTIZERS)
        check_all(self, {
            "sparsity_up": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
            "sparsity_down": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
            "qe": (lambda v: 1 <= v <= 8, "must be in 1..8"),
            "bits": (lambda v: 1 <= v <= 8, "must be in 1..8"),
            "warmup": (lambda v: v >= 1, "must be >= 1"),
            "max_gap": (lambda v: v >= 0, "must be >= 0"),
        }, prefix="resfed")


# --------------------------------------------------------------------------- histories
@dataclasses.dataclass(frozen=True)
class History:
    g: tuple[np.ndarray, ...] = ()
    l: tuple[np.ndarray, ...] = ()  # noqa: E741
    count: int = 0
    tag: bytes = EMPTY_TAG

    @property
    def version(self) -> tuple[int, bytes]:
        return self.count, self.tag

    def committed(self, g_hat: np.ndarray, l_hat: np.ndarray) -> History:
        return History((*self.g, g_hat)[-HISTORY_DEPTH:], (*self.l, l_hat)[-HISTORY_DEPTH:],
                       self.count + 1, digest(g_hat, l_hat))


def load_history(state: RecordDict) -> History:
    meta = state.config_records.get(VERSION_RECORD)
    record = state.array_records.get(HISTORY_RECORD)
    if meta is None or record is None:
        return History()
    g = tuple(record[f"g{i}"].numpy() for i in range(int(meta["g"])))
    l_ = tuple(record[f"l{i}"].numpy() for i in range(int(meta["l"])))
    return History(g, l_, int(meta["count"]), bytes.fromhex(str(meta["tag"])))


def save_history(state: RecordDict, history: History) -> None:
    arrays = {f"g{i}": Array(v) for i, v in enumerate(history.g)}
    arrays.update({f"l{i}": Array(v) for i, v in enumerate(history.l)})
    state[HISTORY_RECORD] = ArrayRecord(arrays)
    state[VERSION_RECORD] = ConfigRecord({"count": history.count, "tag": history.tag.hex(),
                                          "g": len(history.g), "l": len(history.l)})


def flatten(arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(a, dtype=np.float32).reshape(-1) for a in arrays])


def unflatten(vector: np.ndarray, shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
    out, start = [], 0
    for shape in shapes:
        size = int(np.prod(shape, dtype=np.int64))
        out.append(vector[start:start + size].reshape(shape).copy())
        start += size
    return out


class Coder:
    """Encoding/decoding shared by both sides (one config, one model size)."""

    def __init__(self, config: ResFedConfig, n: int) -> None:
        self.config = config
        self.n = n

    def decode(self, content: RecordDict) -> Decoded:
        return CODEC.decode(unpack(content, CODEC.stype), [(self.n,)])

    def encode(self, target: np.ndarray, s_hist: tuple, o_hist: tuple, base: History, *,
               reset: bool, sparsity: float, digests: list[bytes] | None = None
               ) -> tuple[bytes, np.ndarray]:
        """(payload, the receiver's reconstruction) of `target` against the histories."""
        c = self.config
        prediction = None
        if base.count >= c.warmup:
            prediction, _ = predict(list(s_hist), list(o_hist), c.predictor)
        header = Header(residual=prediction is not None, reset=reset,
                        kind=c.quantizer if prediction is not None else "fp32",
                        base_count=base.count, base_digest=base.tag, digests=digests or [])
        if prediction is None:
            return CODEC.encode_full(target, header), np.array(target, dtype=np.float32)
        residual = np.subtract(target, prediction, dtype=np.float32)
        payload = CODEC.encode_residual(residual, header, sparsity=sparsity, qe=c.qe, bits=c.bits)
        decoded = CODEC.decode(payload, [(self.n,)])  # the receiver's arithmetic, exactly
        return payload, reconstruct(prediction, decoded.indices, decoded.values)

    def reconstruction(self, decoded: Decoded, s_hist: tuple, o_hist: tuple) -> np.ndarray:
        if not decoded.header.residual:
            return decoded.vector
        prediction, _ = predict(list(s_hist), list(o_hist), self.config.predictor)
        if prediction is None:
            raise CodecError("resfed: residual payload but no history to predict from")
        return reconstruct(prediction, decoded.indices, decoded.values)


# --------------------------------------------------------------------------- server
@dataclasses.dataclass
class Pending:
    history: History        # the mirror the down message was encoded against
    g_hat: np.ndarray       # the client's reconstruction of the global model
    down: Decoded
    rel_error: float


class ResFedStrategy(SqueezeStrategy):
    def __init__(self, method: ResFedMethod, model: nn.Module) -> None:
        super().__init__(method, model)
        self.config: ResFedConfig = method.config
        self.n = int(sum(int(np.prod(s, dtype=np.int64)) for s in self.shapes))
        self.coder = Coder(self.config, self.n)
        self.mirrors: dict[int, tuple[History, int]] = {}  # partition -> (history, last round)
        self.seen: set[int] = set()
        self.pending: dict[int, Pending] = {}
        self.stats: dict[str, Any] = self._new_stats()

    def _new_stats(self) -> dict[str, Any]:
        return {"down": [], "up": [], "gap": 0, "mismatch": 0, "resyncs": 0, "rel_error": [],
                "g_hat": []}

    def begin_round(self) -> None:
        self.stats = self._new_stats()
        self.pending.clear()

    def end_round(self) -> None:
        """Clients sent a down message but no reply committed: full transfer next time."""
        for partition in list(self.pending):
            self.mirrors.pop(partition, None)
        self.pending.clear()

    def encode_down(self, server_round: int, node_id: int, arrays: ArrayRecord,
                    config: ConfigRecord) -> RecordDict:
        partition = self.directory.partition_of(node_id)
        mirror = self.mirrors.get(partition)
        gap = mirror is not None and self.config.max_gap and \
            server_round - mirror[1] - 1 > self.config.max_gap
        reset = mirror is None or bool(gap)
        if reset and partition in self.seen:
            self.stats["resyncs"] += 1
        history = History() if reset else mirror[0]
        g = flatten([arrays[key].numpy() for key in self.keys])
        payload, g_hat = self.coder.encode(g, history.g, history.l, history, reset=reset,
                                           sparsity=self.config.sparsity_down)
        down = CODEC.decode(payload, [(self.n,)])
        norm = float(np.linalg.norm(g))
        rel = float(np.linalg.norm(g_hat - g)) / norm if norm else 0.0
        self.pending[partition] = Pending(history, g_hat, down, rel)
        self.stats["down"].append(down)
        if len(self.stats["g_hat"]) < EVALUATED_RECONSTRUCTIONS:
            self.stats["g_hat"].append(g_hat)
        content = RecordDict({PAYLOAD_RECORD: pack(CODEC.stype, payload)})
        content["config"] = config
        return content

    def decode_up(self, server_round: int, node_id: int, content: RecordDict) -> ArrayRecord:
        partition = self.directory.partition_of(node_id)
        pending = self.pending.get(partition)
        if pending is None:
            raise CodecError(f"resfed: no down message pending for partition {partition}")
        if METRICS_RECORD not in content.metric_records:
            raise CodecError("resfed: reply has no metrics record")
        up = self.coder.decode(content)
        history = pending.history
        if up.header.reset:
            raise CodecError("resfed: an up payload never resets the history")
        if (up.header.base_count, up.header.base_digest) != history.version:
            self.stats["mismatch"] += 1
            raise CodecError(f"resfed: reply encoded against history version "
                             f"{up.header.base_count}/{up.header.base_digest.hex()}, the server's "
                             f"is {history.count}/{history.tag.hex()}")
        if len(up.header.digests) != 2:
            raise CodecError("resfed: reply must carry the digests of G^ and L^")
        l_hat = self.coder.reconstruction(up, history.l, (*history.g, pending.g_hat))
        if up.header.digests != [digest(pending.g_hat), digest(l_hat)]:
            self.stats["gap"] += 1
            raise CodecError("resfed: the client's reconstruction differs from the server's "
                             "(digest mismatch)")
        # commit: only now does the mirror advance
        self.mirrors[partition] = (history.committed(pending.g_hat, l_hat), server_round)
        self.seen.add(partition)
        del self.pending[partition]
        self.stats["up"].append(up)
        self.stats["rel_error"].append(pending.rel_error)
        return to_arrayrecord(OrderedDict(zip(self.keys, unflatten(l_hat, self.shapes))))

    def models_to_evaluate(self, server_round: int) -> dict[str, list[dict[str, np.ndarray]]]:
        """The lossy global models G^ that this round's first clients train from."""
        return {"reconstructed": [OrderedDict(zip(self.keys, unflatten(g, self.shapes)))
                                  for g in self.stats["g_hat"]]}

    def round_metrics(self, server_round: int) -> dict[str, Any]:
        s = self.stats
        dense = 4 * self.n
        row: dict[str, Any] = {
            "reconstruction_gap": s["gap"],
            "resfed_version_mismatch": s["mismatch"],
            "resfed_resyncs": s["resyncs"],
            "resfed_down_rel_error": (float(np.mean(s["rel_error"])) if s["rel_error"] else None),
        }
        for d in ("down", "up"):
            full = [m for m in s[d] if not m.header.residual]
            res = [m for m in s[d] if m.header.residual]
            row[f"resfed_{d}_full"] = len(full)
            row[f"resfed_{d}_residual"] = len(res)
            row[f"payload_{d}_warmup"] = sum(m.size for m in full)
            row[f"payload_{d}_residual"] = sum(m.size for m in res)
            row[f"compression_{d}"] = (dense * len(res) / sum(m.size for m in res)) if res else None
            row[f"bound_ratio_{d}"] = max((m.size / m.bound() for m in res), default=None)
            row[f"density_{d}"] = (float(np.mean([m.k / self.n for m in res])) if res else None)
        return row


# --------------------------------------------------------------------------- client
class ResFedClient(ClientSide):
    def __init__(self, method: ResFedMethod) -> None:
        super().__init__(method)
        self.config: ResFedConfig = method.config
        self._pending: tuple[History, np.ndarray] | None = None

    def receive(self, content: RecordDict, state: RecordDict, model: nn.Module) -> nn.Module:
        shapes = expected_shapes(model)
        n = int(sum(int(np.prod(s, dtype=np.int64)) for s in shapes))
        coder = Coder(self.config, n)
        down = coder.decode(content)
        history = History() if down.header.reset else load_history(state)
        if (down.header.base_count, down.header.base_digest) != history.version:
            raise CodecError(f"resfed: down payload encoded against history version "
                             f"{down.header.base_count}/{down.header.base_digest.hex()}, this "
                             f"client has {history.count}/{history.tag.hex()}: needs a full "
                             "transfer")
        g_hat = coder.reconstruction(down, history.g, history.l)
        self._pending = (history, g_hat)
        load_arrays(model, unflatten(g_hat, shapes))
        return model

    def send(self, model: nn.Module, state: RecordDict) -> RecordDict:
        if self._pending is None:
            raise RuntimeError("resfed: send before receive")
        history, g_hat = self._pending
        local = flatten(list(model_arrays(model).values()))
        coder = Coder(self.config, local.size)
        g_now = (*history.g, g_hat)
        # the up payload carries the digests of G^ and L^; L^ depends on the coded residual,
        # so encode, then stamp both digests into the header (the sections are unchanged)
        payload, l_hat = coder.encode(local, history.l, g_now, history, reset=False,
                                      sparsity=self.config.sparsity_up)
        payload = CODEC.restamp(payload, local.size, digests=[digest(g_hat), digest(l_hat)])
        save_history(state, history.committed(g_hat, l_hat))
        self._pending = None
        return RecordDict({PAYLOAD_RECORD: pack(CODEC.stype, payload)})


@register("resfed")
class ResFedMethod(Method):
    Config = ResFedConfig

    def server(self, model: nn.Module) -> SqueezeStrategy:
        return ResFedStrategy(self, model)

    def client(self) -> ClientSide:
        return ResFedClient(self)
