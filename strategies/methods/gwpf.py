"""GWPF (Yang et al., Computer Networks 2024): gradient-wise parameter freezing with thawing.

Per scalar coordinate j of the model (every travelling tensor, flattened in canonical order;
BatchNorm buffers are coordinates like the weights) the server holds: the active mask A
(j is frozen iff its freeze counter L[j] > 0), thaw counters L2, EMAs m, v (alpha) of the
aggregated change delta[j] = x_bar[j] - x_last[j] since j's last sync, and tau. A round:

1. exchange "signals" (down: the last round's sync as a *delta* against the state the client
   holds: the averaged values of the synced set, in the order of that set's mask, and the
   coded change of A; or a *full* state to a client that does not hold it: the dense global
   model and A). The client trains `local-steps` SGD steps from its own model (frozen
   coordinates keep their local values; the server never overwrites them), tracking, for
   frozen j, EMAs of the per-step change; it sends its thaw signals: the positions of
   |m_k| / v_k >= tau-thaw among the frozen coordinates (coded, about log2 C(F, k) bits).
   Server: S[j] = sum of signals; L2[j] += 1 if S[j] >= thaw-quorum else L2[j] //= 2; the
   thawed set T = {frozen j: L2[j] > 0}.
2. exchange "train" (down: T, coded among the frozen coordinates). The client sends its values
   on A | T in the canonical order of that mask (the `masked` codec, which names the mask's
   digest: a client on another mask is rejected, never misread). The server averages them
   (weighted by examples, or not: `weighted`), and runs the freeze test on the coordinates
   that were active: ESR = |m| / (v + eps) with delta (intended) or the values themselves
   (`value-ema-compat`, the reference's aliasing); ESR < tau-freeze freezes j. `unfreeze =
   "apf"` makes freezing temporary as in APF: a coordinate frozen again gets a period one round
   longer (additive increase), one that fails the test gets half its period (multiplicative
   decrease); `"never"` (the reference) keeps it frozen. When more than `max-frozen` of the
   coordinates are frozen, tau-freeze halves.

`thaw-timing = "lagged"` folds both into one exchange: round t's signals ride on its values
upload and decide T of round t+1 (T travels with the next round's first message).

The server's global model (what it evaluates) is the last synced value of every coordinate.
A client's state (its model, its copy of A, the version it holds) lives in `context.state`;
the server mirrors the version per partition (`NodeMirrors`): a client that missed a round,
restarted or was rejected gets a full transfer (counted in `gwpf_resyncs`).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from torch import nn

from fedsqueeze.codecs import CodecError, decode_masked_values, encode_masked, get_codec
from fedsqueeze.strategies.base import ARRAYS, TRAIN, ClientSide, Method, SqueezeStrategy
from fedsqueeze.strategies.claims import Measured, Runs, acc, paper_claim
from fedsqueeze.strategies.hooks import TrainingHooks
from fedsqueeze.strategies.payload import pack, unpack
from fedsqueeze.strategies.registry import register
from fedsqueeze.strategies.settings import MethodConfig
from fedsqueeze.strategies.state import NodeMirrors, ServerState, load_array_list, save_array_list
from fedsqueeze.strategies.tensors import (
    Arrays,
    expected_shapes,
    flatten,
    from_arrayrecord,
    keyed,
    model_arrays,
    numel,
    to_arrayrecord,
    travelling_keys,
    unflatten,
)

SIGNALS = "signals"
POSITIONS = get_codec("positions")
DENSE = get_codec("dense")
MASKED = get_codec("masked")
HEADER = "gwpf"                       # config record of every gwpf message
VALUES, MASK, THAWED, SIGNAL = "gwpf.values", "gwpf.mask", "gwpf.thawed", "gwpf.signals"
STATE = "gwpf.client"                 # context.state: [model, active mask], version
EPS = 1e-12


@dataclasses.dataclass(frozen=True)
class GWPFConfig(MethodConfig):
    tau_freeze: float = 0.5        # ESR below this freezes an active coordinate
    tau_thaw: float = 0.5          # a client's local ESR at or above this signals a thaw
    thaw_quorum: int = 1           # signals needed to raise a coordinate's thaw counter
    local_steps: int = 5           # H: SGD steps per round (batch-size examples each)
    alpha: float = 0.99            # EMA factor of m and v (both sides)
    max_frozen: float = 0.8        # frozen fraction above which tau-freeze halves
    thaw_timing: str = "exchange"  # exchange (two per round) or lagged (one per round)
    unfreeze: str = "never"        # never (the reference) or apf (AIMD frozen periods)
    value_ema_compat: bool = False  # the reference's aliasing: EMAs of values, not changes
    weighted: bool = True          # average weighted by examples (the reference: unweighted)
    values: str = "fp32"           # value coding of synced values, both ways

    def __post_init__(self) -> None:
        self.check({
            "tau_freeze": (lambda v: v >= 0, "must be >= 0"),
            "tau_thaw": (lambda v: v >= 0, "must be >= 0"),
            "thaw_quorum": (lambda v: v >= 1, "must be >= 1"),
            "local_steps": (lambda v: v >= 1, "must be >= 1"),
            "alpha": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
            "max_frozen": (lambda v: 0 < v <= 1, "must be in (0, 1]"),
        })
        self.check_choice("thaw_timing", ("exchange", "lagged"))
        self.check_choice("unfreeze", ("never", "apf"))
        self.check_choice("values", ("fp32", "fp16", "bf16"))


def version_of(active: np.ndarray, epoch: int) -> str:
    """Names a state: the active mask after `epoch` syncs (16 hex digits)."""
    h = hashlib.blake2b(digest_size=8, person=b"fedsqz-gwpf")
    h.update(int(epoch).to_bytes(8, "little"))
    h.update(np.packbits(active, bitorder="little").tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- the rules
def ema(m: np.ndarray, v: np.ndarray, delta: np.ndarray, alpha: float) -> None:
    """m <- alpha m + (1-alpha) delta, v <- alpha v + (1-alpha) |delta|, in place (float32)."""
    m *= np.float32(alpha)
    m += np.float32(1 - alpha) * delta
    v *= np.float32(alpha)
    v += np.float32(1 - alpha) * np.abs(delta)


def esr(m: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Effective step ratio |m| / (v + eps): 1 when a coordinate moves one way, ~0 when its
    direction keeps flipping."""
    return np.abs(m) / (v + np.float32(EPS))


def thaw_counters(l2: np.ndarray, votes: np.ndarray, quorum: int) -> np.ndarray:
    """L2 of the frozen coordinates after one round of signals (`votes` per coordinate)."""
    return np.where(votes >= quorum, l2 + 1, l2 // 2)


@dataclasses.dataclass
class FreezeState:
    """The server's per-coordinate state (flat, canonical order)."""

    x_last: np.ndarray              # last synced value of each coordinate
    m: np.ndarray
    v: np.ndarray
    frozen_for: np.ndarray          # L: rounds left frozen (never: 1 while frozen)
    period: np.ndarray              # APF: the next frozen period of each coordinate
    l2: np.ndarray                  # thaw counters
    tau: float

    @classmethod
    def start(cls, x: np.ndarray, tau: float) -> FreezeState:
        n = x.size
        zeros = np.zeros(n, np.float32)
        return cls(x.astype(np.float32), zeros.copy(), zeros.copy(), np.zeros(n, np.int64),
                   np.zeros(n, np.int64), np.zeros(n, np.int64), tau)

    @property
    def active(self) -> np.ndarray:
        return self.frozen_for == 0

    def freeze_test(self, x_bar: np.ndarray, tested: np.ndarray, config: GWPFConfig) -> None:
        """Update m, v on the `tested` coordinates (those active this round) and freeze those
        whose ESR fell below tau; APF counts frozen periods down and adapts them."""
        delta = x_bar[tested] if config.value_ema_compat else x_bar[tested] - self.x_last[tested]
        m, v = self.m[tested], self.v[tested]
        ema(m, v, delta.astype(np.float32), config.alpha)
        self.m[tested], self.v[tested] = m, v
        insignificant = esr(m, v) < self.tau  # its direction keeps flipping: freeze it
        idx = np.flatnonzero(tested)
        if config.unfreeze == "apf":
            self.frozen_for[self.frozen_for > 0] -= 1          # a frozen period runs out
            self.period[idx[insignificant]] += 1               # additive increase
            self.period[idx[~insignificant]] //= 2             # multiplicative decrease
            self.frozen_for[idx[insignificant]] = self.period[idx[insignificant]]
        else:
            self.frozen_for[idx[insignificant]] = 1            # frozen for good
        self.x_last = np.where(tested, x_bar, self.x_last).astype(np.float32)
        if float(np.mean(~self.active)) > config.max_frozen:
            self.tau /= 2


# --------------------------------------------------------------------------- server
@dataclasses.dataclass
class LastSync:
    """What the next round's first message brings to clients that took part in this one."""

    base: str                    # the version they hold (before this sync)
    synced: np.ndarray           # A | T of this round
    x_bar: np.ndarray            # the averaged model (only `synced` travels)
    old_active: np.ndarray       # A before, to code the change of A


class GWPFStrategy(SqueezeStrategy):
    def __init__(self, method: GWPF, model: nn.Module, **options) -> None:
        super().__init__(method, model, **options)
        self.n = numel(self.shapes)
        self.state = FreezeState.start(flatten(list(self.round_arrays.values())),
                                       self.config.tau_freeze)
        self.epoch = 0                       # syncs done
        self.last: LastSync | None = None
        self.thawed = np.zeros(self.n, bool)  # T of this round (lagged: decided last round)
        self.nodes: NodeMirrors[str, str] = NodeMirrors()
        self._stats: dict[str, Any] = {}
        self._pending_signals: dict[int, np.ndarray] = {}  # lagged: signals of this round
        self.version = version_of(self.state.active, self.epoch)  # of the state before a round
        self._payloads: dict[str, bytes] = {}  # this round's catch-up payloads, coded once

    # -- what every down message starts with ----------------------------------------------
    def _payload(self, name: str, encode) -> bytes:
        """A payload every client of the round gets alike, coded once per round."""
        if name not in self._payloads:
            self._payloads[name] = encode()
        return self._payloads[name]

    def _sync_down(self, partition: int) -> RecordDict:
        """The catch-up of a client: a delta against the version it holds, else full."""
        config, last = self.config, self.last
        held = self.nodes.get(partition)
        self.nodes.stage(partition, self.version)
        if last is not None and held == last.base:
            self._stats["down_delta"] += 1
            return RecordDict({
                VALUES: pack(MASKED.stype, self._payload("delta.values", lambda: encode_masked(
                    [last.x_bar], [last.synced], values=config.values))),
                MASK: pack(POSITIONS.stype, self._payload("delta.mask", lambda: POSITIONS.encode(
                    [last.old_active != self.state.active]))),
                HEADER: ConfigRecord({"kind": "delta", "base": last.base,
                                      "version": self.version}),
            })
        self.nodes.reset(partition)  # a resync when this client had been synced before
        self._stats["down_full"] += 1
        return RecordDict({
            VALUES: pack(DENSE.stype, self._payload("full.values", lambda: DENSE.encode(
                [self.state.x_last], dtype=config.values))),
            MASK: pack(POSITIONS.stype, self._payload("full.mask", lambda: POSITIONS.encode(
                [self.state.active]))),
            HEADER: ConfigRecord({"kind": "full", "version": self.version}),
        })

    def _thawed_down(self, content: RecordDict) -> RecordDict:
        content[THAWED] = pack(POSITIONS.stype, self._payload("thawed", lambda: POSITIONS.encode(
            [self.thawed[~self.state.active]])))
        return content

    # -- the contract's hooks ----------------------------------------------------------------
    def exchanges(self, server_round: int) -> tuple[str, ...]:
        return (SIGNALS,) if self.config.thaw_timing == "exchange" else ()

    def begin_round(self, server_round: int, arrays: Arrays) -> None:
        self._stats = {"down_delta": 0, "down_full": 0, "signals": 0, "signal_bytes": 0,
                       "resyncs_before": self.nodes.resyncs}
        self._pending_signals = {}
        self._payloads = {}
        if self.config.thaw_timing == "exchange":
            self.thawed = np.zeros(self.n, bool)

    def encode_exchange(self, name: str, server_round: int, node_id: int) -> RecordDict:
        return self._sync_down(self.client_key(node_id))

    def decode_exchange(self, name: str, server_round: int, node_id: int,
                        content: RecordDict) -> np.ndarray:
        return self._signals(content)

    def _signals(self, content: RecordDict) -> np.ndarray:
        """A client's thaw signals: one bool per coordinate frozen under this round's A."""
        frozen = int((~self.state.active).sum())
        payload = unpack(content, POSITIONS.stype, SIGNAL)
        positions = POSITIONS.decode_positions(payload, [(frozen,)])[0]
        self._stats["signal_bytes"] += len(payload)
        return positions.mask.astype(bool)

    def combine_exchange(self, name: str, server_round: int, decoded: dict[int, Any]) -> None:
        self._decide_thaw(list(decoded.values()))

    def _decide_thaw(self, signals: list[np.ndarray]) -> None:
        frozen = ~self.state.active
        votes = np.sum(signals, axis=0) if signals else np.zeros(int(frozen.sum()), np.int64)
        self._stats["signals"] += int(np.sum(votes))
        l2 = self.state.l2
        l2[frozen] = thaw_counters(l2[frozen], votes, self.config.thaw_quorum)
        l2[~frozen] = 0
        self.thawed = frozen & (l2 > 0)

    def encode_down(self, server_round: int, node_id: int, arrays: Arrays) -> RecordDict:
        partition = self.client_key(node_id)
        if self.config.thaw_timing == "exchange":
            content = RecordDict({HEADER: ConfigRecord({"version": self.version})})
        else:
            content = self._sync_down(partition)
        return self._thawed_down(content)

    def decode_up(self, server_round: int, node_id: int, content: RecordDict) -> Arrays:
        synced = self.state.active | self.thawed
        values = decode_masked_values(unpack(content, MASKED.stype, VALUES), [(self.n,)],
                                      [synced])[0]
        x = self.state.x_last.copy()
        x[synced] = values
        if self.config.thaw_timing == "lagged":
            self._pending_signals[node_id] = self._signals(content)
        self.nodes.commit(self.client_key(node_id), self.version)
        return keyed(self.keys, unflatten(x, self.shapes))

    def aggregate_decoded(self, server_round: int, replies: list[Message]
                          ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        if self.config.weighted:
            arrays, metrics = super().aggregate_decoded(server_round, replies)
            x_bar = flatten(list(from_arrayrecord(arrays).values()))
        else:
            models = [flatten(list(from_arrayrecord(r.content["arrays"]).values()))
                      for r in replies]
            x_bar = np.mean(models, axis=0, dtype=np.float64).astype(np.float32)
            metrics = self.aggregate_metrics(replies)
        tested = self.state.active.copy()
        synced = tested | self.thawed
        self._stats["values_up"] = int(synced.sum()) * len(replies)
        self._stats["thawed"] = int(self.thawed.sum())
        thawed = self.thawed
        if self.config.thaw_timing == "lagged":  # T of the next round, among today's frozen
            good = {r.metadata.src_node_id for r in replies}
            self._decide_thaw([s for node, s in self._pending_signals.items() if node in good])
        self.state.freeze_test(x_bar, tested, self.config)
        self.state.x_last[thawed] = x_bar[thawed]
        self.last = LastSync(self.version, synced, x_bar, tested)
        self.epoch += 1
        self.version = version_of(self.state.active, self.epoch)
        global_model = keyed(self.keys, unflatten(self.state.x_last, self.shapes))
        return to_arrayrecord(global_model), metrics

    def end_round(self, server_round: int) -> None:
        self.nodes.end_round()

    def client_state_lost(self, partition_id: int) -> None:
        self.nodes.forget(partition_id)

    def round_metrics(self, server_round: int) -> dict[str, Any]:
        s = self._stats
        frozen = ~self.state.active
        return {"gwpf_frozen_fraction": float(frozen.mean()),
                "gwpf_thawed": s.get("thawed", 0), "gwpf_values_up": s.get("values_up", 0),
                "gwpf_signals": s["signals"], "gwpf_signal_bytes": s["signal_bytes"],
                "gwpf_tau": self.state.tau, "gwpf_down_delta": s["down_delta"],
                "gwpf_down_full": s["down_full"],
                "gwpf_resyncs": self.nodes.resyncs - s["resyncs_before"]}

    def export_state(self) -> ServerState:
        st = self.state
        arrays = {"x_last": st.x_last, "m": st.m, "v": st.v, "frozen_for": st.frozen_for,
                  "period": st.period, "l2": st.l2, "thawed": self.thawed}
        meta: dict[str, Any] = {"tau": st.tau, "epoch": self.epoch}
        if self.last is not None:
            arrays.update({"last.synced": self.last.synced, "last.x_bar": self.last.x_bar,
                           "last.old_active": self.last.old_active})
            meta["last.base"] = self.last.base
        mirrors = self.nodes.export(lambda version: ({}, {"version": version}))
        arrays.update(mirrors.arrays)
        meta["mirrors"] = mirrors.meta
        return ServerState(arrays, meta)

    def import_state(self, state: ServerState) -> None:
        a, meta = state.arrays, state.meta
        self.state = FreezeState(a["x_last"], a["m"], a["v"], a["frozen_for"], a["period"],
                                 a["l2"], float(meta["tau"]))
        self.thawed, self.epoch = a["thawed"].astype(bool), int(meta["epoch"])
        self.version = version_of(self.state.active, self.epoch)
        if "last.base" in meta:
            self.last = LastSync(meta["last.base"], a["last.synced"].astype(bool),
                                 a["last.x_bar"], a["last.old_active"].astype(bool))
        self.nodes.restore(ServerState({}, meta["mirrors"]), lambda _, m: m["version"])


# --------------------------------------------------------------------------- client
class ChangeTracker(TrainingHooks):
    """H local steps; EMAs (m, v) of the per-step change of the frozen coordinates."""

    def __init__(self, frozen: np.ndarray, alpha: float, steps: int) -> None:
        super().__init__()
        self.frozen, self.alpha, self.local_steps = frozen, alpha, steps
        self.m = np.zeros(int(frozen.sum()), np.float32)
        self.v = np.zeros_like(self.m)
        self.previous = self.m

    def install(self, model: nn.Module) -> Iterator:
        self.previous = flatten(list(model_arrays(model).values()))[self.frozen]
        return iter(())

    def after_step(self, model: nn.Module) -> None:
        if not self.frozen.any():
            return
        now = flatten(list(model_arrays(model).values()))[self.frozen]
        ema(self.m, self.v, now - self.previous, self.alpha)
        self.previous = now

    def signals(self, tau_thaw: float) -> np.ndarray:
        """The thaw signals: frozen coordinates whose local ESR reached tau-thaw."""
        return esr(self.m, self.v) >= tau_thaw


class GWPFClient(ClientSide):
    """Keeps its whole model and its copy of A in `context.state`."""

    def __init__(self, method: GWPF) -> None:
        super().__init__(method)
        self.config: GWPFConfig = method.config
        self._active = self._synced = np.zeros(0, bool)
        self._version = ""

    def trains(self, exchange: str) -> bool:
        return exchange == SIGNALS or self.config.thaw_timing == "lagged"

    def _apply_sync(self, content: RecordDict, state: RecordDict, n: int
                    ) -> tuple[np.ndarray, np.ndarray, str]:
        """The model, A and version after the server's catch-up (delta or full)."""
        header = content.config_records[HEADER]
        if header["kind"] == "full":
            x = DENSE.decode(unpack(content, DENSE.stype, VALUES), [(n,)])[0]
            active = POSITIONS.decode_positions(unpack(content, POSITIONS.stype, MASK),
                                                [(n,)])[0].mask
            return x.astype(np.float32), active.astype(bool), str(header["version"])
        saved = load_array_list(state, STATE)
        if saved is None or saved[1]["version"] != header["base"]:
            held = "none" if saved is None else saved[1]["version"]
            raise CodecError(f"gwpf: the delta is against version {header['base']}, this "
                             f"client holds {held}: needs a full transfer")
        (x, active, synced), _ = saved
        values = decode_masked_values(unpack(content, MASKED.stype, VALUES), [(n,)],
                                      [synced.astype(bool)])[0]
        x = x.copy()
        x[synced.astype(bool)] = values
        changed = POSITIONS.decode_positions(unpack(content, POSITIONS.stype, MASK),
                                             [(n,)])[0].mask
        return x, active.astype(bool) ^ changed.astype(bool), str(header["version"])

    def _thawed(self, content: RecordDict, active: np.ndarray) -> np.ndarray:
        """A | T: the coordinates synced this round (T travels among the frozen ones)."""
        frozen = ~active
        among = POSITIONS.decode_positions(unpack(content, POSITIONS.stype, THAWED),
                                           [(int(frozen.sum()),)])[0].mask
        thawed = np.zeros(active.size, bool)
        thawed[np.flatnonzero(frozen)[among.astype(bool)]] = True
        return active | thawed

    def receive(self, exchange: str, content: RecordDict, state: RecordDict) -> Arrays:
        model = self.method.structure()
        shapes = expected_shapes(model)
        x, active, version = self._apply_sync(content, state, numel(shapes))
        if exchange == TRAIN:  # lagged: T of this round travels with its first message
            self._synced = self._thawed(content, active)
        self._active, self._version = active, version
        self.hooks = ChangeTracker(~active, self.config.alpha, self.config.local_steps)
        return keyed(travelling_keys(model), unflatten(x, shapes))

    def send(self, exchange: str, arrays: Arrays, state: RecordDict) -> RecordDict:
        x = flatten(list(arrays.values()))
        signals = POSITIONS.encode([self.hooks.signals(self.config.tau_thaw)])
        if exchange == SIGNALS:
            save_array_list(state, STATE, [x, self._active, np.zeros(x.size, bool)],
                            version=self._version)
            return RecordDict({SIGNAL: pack(POSITIONS.stype, signals)})
        reply = self._values(x, state)
        reply[SIGNAL] = pack(POSITIONS.stype, signals)
        return reply

    def reply_without_training(self, exchange: str, content: RecordDict, state: RecordDict
                               ) -> RecordDict:
        saved = load_array_list(state, STATE)
        if saved is None or saved[1]["version"] != content.config_records[HEADER]["version"]:
            raise CodecError("gwpf: no model trained in this round's signals exchange")
        (x, active, _), meta = saved
        self._active, self._version = active.astype(bool), str(meta["version"])
        self._synced = self._thawed(content, self._active)
        return self._values(x, state)

    def _values(self, x: np.ndarray, state: RecordDict) -> RecordDict:
        """The values on A | T; what the next round's delta applies to is kept: this model,
        A and the synced set."""
        save_array_list(state, STATE, [x, self._active, self._synced], version=self._version)
        return RecordDict({VALUES: pack(MASKED.stype, encode_masked(
            [x], [self._synced], values=self.config.values))})

    def evaluation(self, content: RecordDict, state: RecordDict) -> dict[str, Arrays]:
        """The global model, and this client's model as it trains on next round: the global
        values where it synced, its own where its coordinates stayed frozen (the frozen ones
        differ between clients)."""
        models = super().evaluation(content, state)
        saved = load_array_list(state, STATE)
        if saved is None:
            return models
        (x, _, synced), _ = saved
        synced = synced.astype(bool)
        if not synced.any():  # trained in a signals exchange but never synced
            return models
        mine = flatten(list(models[ARRAYS].values()))
        mine[~synced] = x[~synced]
        model = self.method.structure()
        models["own"] = keyed(travelling_keys(model), unflatten(mine, expected_shapes(model)))
        return models


@paper_claim("GWPF", "up to 48.73% less communication than APF, +2.01% accuracy",
             setting="MNIST CNN (582,026 params), Dirichlet(1), 10 clients",
             needs=("gwpf",))
def _bytes_against_fedavg(runs: Runs, ours: list[str]) -> Measured:
    """Each GWPF run's share of FedAvg's bytes: the paper's baseline (APF) is not here."""
    ref = runs.message_total(runs.reference)
    return Measured("; ".join(f"{label}: {runs.message_total(label) / ref:.3f} of FedAvg's "
                              f"bytes, accuracy {acc(runs.final_accuracy(label))}"
                              for label in ours),
                    "not checkable here: no APF baseline (gwpf.unfreeze = apf is GWPF with "
                    "APF's unfreezing, not APF)")


@register("gwpf")
class GWPF(Method):
    Config = GWPFConfig
    Strategy = GWPFStrategy
    Client = GWPFClient
