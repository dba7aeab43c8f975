"""ResFed's residual (Song et al., arXiv 2212.05602): residuals against shared predictors, a
channel that codes both directions against per-client histories.

Both ends keep the same history of *reconstructed* models per client - the global models the
client reconstructed (G^) and the local models the server reconstructed (L^) - and apply ONE
prediction rule (`predict`, numpy float32, fixed operation order), so only the residual
(actual - predicted), sparsified (global top-k) and quantized, travels as one `residual`
codec payload (codecs/residual.py):

* down (unicast, per client): full model while the client has fewer than `warmup` synced
  rounds, else r = C(G - predict(G^hist, L^hist)); the client trains from G^ = P + r^;
* up: full model while warming up, else r = C(L - predict(L^hist, G^hist + [G^])).

State. The client's histories live in `context.state` (record "resfed.history": flat float32
vectors and their version); the server mirrors them per client (`ResidualLink`, a
`NodeMirrors`), exported for resume. Histories are keyed by the client's own participation
(rounds it skipped are not in them), depth 3 (what `linear` reads). A history version is
(synced rounds since the last reset, 8-byte digest of the last G^ and L^); every payload names
the version it was encoded against. The client commits G^ and L^ only when it codes its reply
(Flower discards state changes when the handler raises); the server commits only after it
decoded the reply and the client's digests of G^ and L^ match its own (else the reply is
rejected and `reconstruction_gap` counts it). A client whose round failed in any way (error
reply, undecodable reply, no reply) is reset: its next participation is a full transfer
(counted in `resfed_resyncs`). Every coded array travels this way (BatchNorm running
statistics included, as in the reference).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from flwr.app import RecordDict

from fedsqueeze.codecs import QUANTIZERS, CodecError, DecodedResidual, ResidualHeader, get_codec
from fedsqueeze.strategies.channel import Channel, register_channel
from fedsqueeze.strategies.payload import PAYLOAD_RECORD, pack, unpack
from fedsqueeze.strategies.state import (
    NodeMirrors,
    ServerState,
    digest,
    load_array_list,
    save_array_list,
)
from fedsqueeze.strategies.tensors import (
    flatten,
    numel,
    top_k_count,
    top_k_indices,
    unflatten,
)

CODEC = get_codec("residual")
PREDICTORS = ("zero", "half_drift", "linear")
F32 = np.float32
HISTORY_DEPTH = 3  # linear reads S[-2] and O[-3]
HISTORY_RECORD = "resfed.history"
EMPTY_TAG = bytes(8)
# how many clients' G^ per round are evaluated centrally (each costs one test-set pass)
EVALUATED_RECONSTRUCTIONS = 3


@register_channel("residual")
@dataclasses.dataclass(frozen=True)
class Residual(Channel):
    codes = "duplex"

    predictor: str = "half_drift"  # zero, half_drift, linear
    sparsity_up: float = 0.95      # fraction of residual entries dropped (global top-k)
    sparsity_down: float = 0.95
    quantizer: str = "median"      # median (reference, qe levels), uniform (bits), fp32, fp16
    qe: int = 1
    bits: int = 4
    warmup: int = 1                # synced rounds sent as full models after a (re)start
    max_gap: int = 0               # reset a client absent for more rounds than this; 0 = never

    def __post_init__(self) -> None:
        self.check_choice("predictor", PREDICTORS)
        self.check_choice("quantizer", QUANTIZERS)
        self.check({
            "sparsity_up": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
            "sparsity_down": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
            "qe": (lambda v: 1 <= v <= 8, "must be in 1..8"),
            "bits": (lambda v: 1 <= v <= 8, "must be in 1..8"),
            "warmup": (lambda v: v >= 1, "must be >= 1"),
            "max_gap": (lambda v: v >= 0, "must be >= 0"),
        })

    @property
    def spreads_outliers(self) -> bool:
        """The median quantizer sends a group's median, not its outliers."""
        return self.quantizer == "median"

    def link(self) -> ResidualLink:
        return ResidualLink(self)

    # -- the client's side --------------------------------------------------------------
    def receive(self, content: RecordDict, state: RecordDict, shapes: list[tuple[int, ...]]
                ) -> tuple[list[np.ndarray], Any]:
        """(G^ as arrays of these shapes, what `reply` needs) of a down message."""
        coder = Coder(self, numel(shapes))
        down = coder.decode(content)
        history = History() if down.header.reset else load_history(state)
        if (down.header.base_count, down.header.base_digest) != history.version:
            raise CodecError(f"resfed: down payload encoded against history version "
                             f"{down.header.base_count}/{down.header.base_digest.hex()}, this "
                             f"client has {history.count}/{history.tag.hex()}: needs a full "
                             "transfer")
        g_hat = coder.reconstruction(down, history.g, history.l)
        return unflatten(g_hat, shapes), (history, g_hat)

    def reply(self, arrays: list[np.ndarray], pending: Any, state: RecordDict) -> dict:
        """The records of the reply for the trained arrays; commits the client's history."""
        history, g_hat = pending
        local = flatten(arrays)
        if not np.isfinite(local).all():  # the median quantizer would hide it
            raise CodecError("resfed: the trained model has non-finite values")
        coder = Coder(self, local.size)
        g_now = (*history.g, g_hat)
        # the up payload carries the digests of G^ and L^; L^ depends on the coded residual,
        # so encode, then stamp both digests into the header (the sections are unchanged)
        payload, l_hat = coder.encode(local, history.l, g_now, history, reset=False,
                                      sparsity=self.sparsity_up)
        payload = CODEC.restamp(payload, local.size, digests=[digest(g_hat), digest(l_hat)])
        save_history(state, history.committed(g_hat, l_hat))  # committed with its reply
        return {PAYLOAD_RECORD: pack(CODEC.stype, payload)}


# --------------------------------------------------------------------------- prediction
def predict(s_hist: list[np.ndarray], o_hist: list[np.ndarray], rule: str
            ) -> tuple[np.ndarray | None, str]:
    """Prediction of the next element of trajectory S from S's and the other trajectory O's
    histories (oldest first; O[-1] is the newest element of O). Returns (prediction, rule used)
    or (None, "none") when S is empty (a full transfer is needed).

    * zero:        S[-1]
    * half_drift:  S[-1] + 0.5 (O[-1] - O[-2])
    * linear:      O[-1] + 2 (S[-1] - O[-2]) - (S[-2] - O[-3])
    A rule whose history is too short falls back: linear -> half_drift -> zero. Every step is
    one correctly rounded float32 numpy operation in a fixed order (no fused multiply-adds),
    so a CUDA client and a CPU server predict the same bits.
    """
    if rule not in PREDICTORS:
        raise ValueError(f"unknown predictor {rule!r}")
    if not s_hist:
        return None, "none"
    if rule == "linear" and len(s_hist) >= 2 and len(o_hist) >= 3:
        a = np.subtract(s_hist[-1], o_hist[-2], dtype=F32)
        b = np.subtract(s_hist[-2], o_hist[-3], dtype=F32)
        c = np.multiply(a, F32(2.0), dtype=F32)
        d = np.subtract(c, b, dtype=F32)
        return np.add(o_hist[-1], d, dtype=F32), "linear"
    if rule in ("linear", "half_drift") and len(o_hist) >= 2:
        d = np.subtract(o_hist[-1], o_hist[-2], dtype=F32)
        h = np.multiply(d, F32(0.5), dtype=F32)
        return np.add(s_hist[-1], h, dtype=F32), "half_drift"
    return np.array(s_hist[-1], dtype=F32, copy=True), "zero"


def reconstruct(prediction: np.ndarray, indices: np.ndarray, values: np.ndarray) -> np.ndarray:
    """prediction + residual at `indices` (the only arithmetic on the decode side)."""
    out = np.array(prediction, dtype=F32, copy=True)
    out[indices] = np.add(out[indices], values.astype(F32, copy=False), dtype=F32)
    return out


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

    def arrays(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """(arrays, meta) of this history, for context.state and exported server state."""
        arrays = {f"g{i}": v for i, v in enumerate(self.g)}
        arrays.update({f"l{i}": v for i, v in enumerate(self.l)})
        return arrays, {"g": len(self.g), "l": len(self.l), "count": self.count,
                        "tag": self.tag.hex()}

    @classmethod
    def of(cls, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> History:
        return cls(tuple(arrays[f"g{i}"] for i in range(int(meta["g"]))),
                   tuple(arrays[f"l{i}"] for i in range(int(meta["l"]))),
                   int(meta["count"]), bytes.fromhex(str(meta["tag"])))


def load_history(state: RecordDict) -> History:
    saved = load_array_list(state, HISTORY_RECORD)
    if saved is None:
        return History()
    values, meta = saved
    names = [f"g{i}" for i in range(int(meta["g"]))] + [f"l{i}" for i in range(int(meta["l"]))]
    return History.of(dict(zip(names, values)), meta)


def save_history(state: RecordDict, history: History) -> None:
    arrays, meta = history.arrays()
    save_array_list(state, HISTORY_RECORD, list(arrays.values()), **meta)


class Coder:
    """Encoding/decoding shared by both sides (one config, one model size)."""

    def __init__(self, config: Residual, n: int) -> None:
        self.config = config
        self.n = n

    def decode(self, content: RecordDict) -> DecodedResidual:
        return CODEC.decode(unpack(content, CODEC.stype), [(self.n,)])

    def encode(self, target: np.ndarray, s_hist: tuple, o_hist: tuple, base: History, *,
               reset: bool, sparsity: float, digests: list[bytes] | None = None
               ) -> tuple[bytes, np.ndarray]:
        """(payload, the receiver's reconstruction) of `target` against the histories."""
        c = self.config
        prediction = None
        if base.count >= c.warmup:
            prediction, _ = predict(list(s_hist), list(o_hist), c.predictor)
        header = ResidualHeader(residual=prediction is not None, reset=reset,
                                kind=c.quantizer if prediction is not None else "fp32",
                                base_count=base.count, base_digest=base.tag,
                                digests=digests or [])
        if prediction is None:
            return CODEC.encode_full(target, header), np.array(target, dtype=np.float32)
        residual = np.subtract(target, prediction, dtype=np.float32)
        idx = top_k_indices(residual, top_k_count(self.n, sparsity))  # global top-k
        payload = CODEC.encode_residual(self.n, idx, residual[idx], header, qe=c.qe,
                                        bits=c.bits)
        decoded = CODEC.decode(payload, [(self.n,)])  # the receiver's arithmetic, exactly
        return payload, reconstruct(prediction, decoded.indices, decoded.values)

    def reconstruction(self, decoded: DecodedResidual, s_hist: tuple, o_hist: tuple) -> np.ndarray:
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
    down: DecodedResidual
    rel_error: float


class ResidualLink:
    """The server's side: a history mirror per client, a unicast residual each way."""

    def __init__(self, channel: Residual) -> None:
        self.config = channel
        # client -> (history, last round it synced); staged: client -> Pending
        self.nodes: NodeMirrors[tuple[History, int], Pending] = NodeMirrors()
        self.stats: dict[str, Any] = self._new_stats()
        self.n = 0
        self._resyncs_before = 0

    @staticmethod
    def _new_stats() -> dict[str, Any]:
        return {"down": [], "up": [], "gap": 0, "mismatch": 0, "rel_error": [], "g_hat": []}

    def begin_round(self) -> None:
        self.stats = self._new_stats()
        self._resyncs_before = self.nodes.resyncs
        self.nodes.pending.clear()

    def end_round(self) -> None:
        """Clients sent a down message but no reply committed: full transfer next time."""
        self.nodes.end_round()

    def encode(self, server_round: int, client: int, arrays: list[np.ndarray]
               ) -> tuple[dict, bool]:
        """(records of the down message, whether the client starts over: a full transfer)."""
        g = flatten(arrays)
        self.n = g.size
        mirror = self.nodes.get(client)
        gap = mirror is not None and self.config.max_gap and \
            server_round - mirror[1] - 1 > self.config.max_gap
        reset = mirror is None or bool(gap)
        if reset:
            self.nodes.reset(client)
        history = History() if reset else mirror[0]
        payload, g_hat = Coder(self.config, self.n).encode(
            g, history.g, history.l, history, reset=reset, sparsity=self.config.sparsity_down)
        down = CODEC.decode(payload, [(self.n,)])
        norm = float(np.linalg.norm(g))
        rel = float(np.linalg.norm(g_hat - g)) / norm if norm else 0.0
        self.nodes.stage(client, Pending(history, g_hat, down, rel))
        self.stats["down"].append(down)
        if len(self.stats["g_hat"]) < EVALUATED_RECONSTRUCTIONS:
            self.stats["g_hat"].append(g_hat)
        return {PAYLOAD_RECORD: pack(CODEC.stype, payload)}, reset

    def decode(self, server_round: int, client: int, content: RecordDict,
               shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
        pending = self.nodes.staged(client)
        if pending is None:
            raise CodecError(f"resfed: no down message pending for client {client}")
        up = Coder(self.config, numel(shapes)).decode(content)
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
        l_hat = Coder(self.config, numel(shapes)).reconstruction(
            up, history.l, (*history.g, pending.g_hat))
        if up.header.digests != [digest(pending.g_hat), digest(l_hat)]:
            self.stats["gap"] += 1
            raise CodecError("resfed: the client's reconstruction differs from the server's "
                             "(digest mismatch)")
        # commit: only now does the mirror advance
        self.nodes.commit(client, (history.committed(pending.g_hat, l_hat), server_round))
        self.stats["up"].append(up)
        self.stats["rel_error"].append(pending.rel_error)
        return unflatten(l_hat, shapes)

    def models(self, shapes: list[tuple[int, ...]]) -> dict[str, list[list[np.ndarray]]]:
        """The lossy global models G^ that this round's first clients train from."""
        return {"reconstructed": [unflatten(g, shapes) for g in self.stats["g_hat"]]}

    def forget(self, client: int) -> None:
        self.nodes.forget(client)

    def export(self) -> ServerState:
        def arrays_of(mirror: tuple[History, int]) -> tuple[dict, dict]:
            arrays, meta = mirror[0].arrays()
            return arrays, {**meta, "last": mirror[1]}

        return self.nodes.export(arrays_of)

    def restore(self, state: ServerState) -> None:
        self.nodes.restore(state, lambda arrays, meta: (History.of(arrays, meta),
                                                        int(meta["last"])))

    def round_metrics(self) -> dict[str, Any]:
        s = self.stats
        dense = 4 * self.n
        row: dict[str, Any] = {
            "reconstruction_gap": s["gap"],
            "resfed_version_mismatch": s["mismatch"],
            "resfed_resyncs": self.nodes.resyncs - self._resyncs_before,
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
