"""FedSparsify (Stripelis et al., "Federated Progressive Sparsification (Purge-Merge-Tune)+",
arXiv 2204.12430): progressive global-magnitude pruning, Global and Local (majority vote).

Spec: ../shared/specs/fedsparsify.md. Summary of what this module does:

- Schedule (Eq. 1), rounds 1-indexed: s_t = s_f + (s_0 - s_f) (1 - (f floor(t/f) - t_0) /
  (T - t_0))^n, applied when t > t_0 (rounds past T use s_f). T = 0 in run config means
  `num-server-rounds`.
- Pruning operator (`magnitude_masks`, `prune_global`): one magnitude threshold across all
  trainable parameters (biases included; BatchNorm running statistics never), taken at
  position floor(s_t N) of the sorted |w| with zeros counted, keeping |w| >= tau (ties kept),
  intersected with the previous mask: monotone, a pruned entry never comes back.
- Global: FedAvg of the clients' masked models, then the server prunes the aggregate to s_t.
- Local: each client prunes its own trained model to s_t; the server keeps a weight where at
  least floor(N/2) of the N participating clients kept it (raw counts) and sets it to the
  sample-weighted average over all clients (`average = "all"`, zeros of clients that pruned it
  included) or over the clients that kept it (`average = "keepers"`); FedAvg while t <= t_0.
- Clients train with the global mask enforced: the mask multiplies the weights before training,
  every gradient (a tensor hook, so SGD momentum buffers and weight decay never move a pruned
  entry) and the weights again after every optimizer step.

The global mask is state of the server strategy: all True until the first pruning, then the
kept entries of each pruning, intersected with the previous mask (the spec's "mask = w != 0"
would freeze zero-initialised biases from round 1: Glorot init has zero biases).

Wire format (one payload per message, canonical state_dict order, fp32 values by default):
- down: `sparse` = the values at the global mask's positions + the coded positions of the mask
  (non-trainable tensors: their non-zeros). It is self-contained: a client needs no state from
  earlier rounds, which keeps it correct with partial participation and with ClientApp
  processes that start fresh (simulation workers). The alternative (values in the order of a
  mask the client holds + the coded mask diff) would save at most the positions, i.e. about
  log2 C(n, k) bits per client per round (~11 KB at 20 % density for fc2, ~7 % of that
  round's downlink), and costs per-node mask versioning on both sides; not worth it here.
- up, Global: `masked` = values at the global mask's positions, canonical order, no positions;
  an 8-byte mask digest makes a mismatch a CodecError instead of misplaced values. The server
  remembers the mask it sent each node this round.
- up, Local: `sparse` = values + the local mask's coded positions.
A client's mask is always taken from decoded positions, never from `value != 0`, so fp16
values that round to zero cannot desynchronise the two sides.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from torch import nn

from fedsqueeze.codecs import (
    VALUE_SPECS,
    CodecError,
    decode_masked,
    decode_sparse_parts,
    encode_masked,
    encode_sparse,
    get_codec,
)
from fedsqueeze.strategies.base import ClientSide, Method, SqueezeStrategy
from fedsqueeze.strategies.claims import Measured, Runs, acc, paper_claim
from fedsqueeze.strategies.hooks import TrainingHooks
from fedsqueeze.strategies.payload import METRICS_RECORD, PAYLOAD_RECORD, pack, unpack
from fedsqueeze.strategies.registry import register
from fedsqueeze.strategies.settings import ConfigError, MethodConfig, check
from fedsqueeze.strategies.state import ServerState
from fedsqueeze.strategies.tensors import (
    Arrays,
    expected_shapes,
    from_arrayrecord,
    keyed,
    to_arrayrecord,
    travelling_keys,
)

VARIANTS = ("global", "local")
AVERAGES = ("all", "keepers")
SPARSE = get_codec("sparse")
MASKED = get_codec("masked")

# --------------------------------------------------------------------------------------------
# Configuration and schedule


@dataclasses.dataclass(frozen=True)
class FedSparsifyConfig(MethodConfig):
    variant: str = "global"          # global (server prunes) or local (clients prune + vote)
    initial_sparsity: float = 0.0    # s_0
    final_sparsity: float = 0.9      # s_f
    start_round: int = 1             # t_0: pruning happens when t > t_0
    total_rounds: int = 0            # T; 0 = num-server-rounds
    frequency: int = 1               # f: prune every f rounds
    exponent: float = 3.0            # n
    average: str = "all"             # local: average over all clients or only over keepers
    values: str = "fp32"             # value format on the wire (the codecs' value specs)

    def __post_init__(self) -> None:
        self.check_choice("variant", VARIANTS)
        self.check_choice("average", AVERAGES)
        self.check_choice("values", VALUE_SPECS)
        self.check({
            "initial_sparsity": (lambda v: 0.0 <= v < 1.0, "must be in [0, 1)"),
            "final_sparsity": (lambda v: 0.0 <= v < 1.0, "must be in [0, 1)"),
            "start_round": (lambda v: v >= 0, "must be >= 0"),
            "total_rounds": (lambda v: v >= 0, "must be >= 0 (0 = num-server-rounds)"),
            "frequency": (lambda v: v >= 1, "must be >= 1"),
            "exponent": (lambda v: v > 0, "must be > 0"),
        })
        check(self.final_sparsity >= self.initial_sparsity, self.key("final_sparsity"),
              self.final_sparsity, f"must be >= {self.key('initial_sparsity')} "
              f"({self.initial_sparsity})")

    def schedule(self, num_server_rounds: int) -> Schedule:
        """Eq. 1's schedule with T resolved (total-rounds, else the run's length)."""
        T = self.total_rounds or num_server_rounds
        if T <= self.start_round:
            key = self.key("total_rounds") if self.total_rounds else "num-server-rounds"
            raise ConfigError(f"run-config '{key}' = {T} is invalid: the schedule's T must be "
                              f"> {self.key('start_round')} ({self.start_round})")
        return Schedule(self.initial_sparsity, self.final_sparsity, self.start_round, T,
                        self.frequency, self.exponent)


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Eq. 1 of the paper with T resolved."""

    s0: float
    sf: float
    t0: int
    T: int
    f: int
    n: float

    def prunes(self, t: int) -> bool:
        return t > self.t0 and self.sparsity(t) > 0

    def sparsity(self, t: int) -> float:
        """Target sparsity s_t of round t (1-indexed); s_0 up to t_0, s_f from T on."""
        if t <= self.t0:
            return self.s0
        step = min(self.f * (t // self.f), self.T)
        frac = (step - self.t0) / (self.T - self.t0)
        frac = min(max(frac, 0.0), 1.0)
        return self.sf + (self.s0 - self.sf) * (1.0 - frac) ** self.n


# --------------------------------------------------------------------------------------------
# Pruning operator and majority vote (numpy, canonical order; `prunable[i]` says whether the
# i-th tensor is a trainable parameter)


def magnitude_threshold(arrays: list[np.ndarray], sparsity: float) -> float:
    """|w| at position floor(sparsity * N) of all N entries sorted by magnitude (zeros in)."""
    flat = np.concatenate([np.abs(np.asarray(a, np.float32)).reshape(-1) for a in arrays])
    if flat.size == 0:
        return 0.0
    k = min(int(math.floor(sparsity * flat.size)), flat.size - 1)
    return float(np.partition(flat, k)[k])


def magnitude_masks(arrays: list[np.ndarray], prunable: list[bool], sparsity: float,
                    previous: list[np.ndarray | None] | None = None) -> list[np.ndarray | None]:
    """Keep-masks of the global-magnitude rule: |w| >= tau, tau over all prunable entries
    (zeros counted), intersected with `previous` (a pruned entry never comes back).
    None for tensors that are not prunable."""
    masks: list[np.ndarray | None] = []
    tau = (magnitude_threshold([a for a, p in zip(arrays, prunable) if p], sparsity)
           if sparsity > 0 else 0.0)
    for i, (a, p) in enumerate(zip(arrays, prunable)):
        if not p:
            masks.append(None)
            continue
        keep = np.abs(np.asarray(a, np.float32)) >= tau
        if previous is not None and previous[i] is not None:
            keep &= previous[i]
        masks.append(keep)
    return masks


def apply_masks(arrays: list[np.ndarray], masks: list[np.ndarray | None]) -> list[np.ndarray]:
    return [np.asarray(a, np.float32).copy() if m is None
            else np.where(m, a, np.float32(0)).astype(np.float32) for a, m in zip(arrays, masks)]


def prune_global(arrays: list[np.ndarray], prunable: list[bool], sparsity: float
                 ) -> list[np.ndarray]:
    """Zero every prunable entry with |w| < tau (one tau over all prunable tensors)."""
    return apply_masks(arrays, magnitude_masks(arrays, prunable, sparsity))


def vote_threshold(num_clients: int) -> int:
    """Votes a weight needs to survive the majority vote: floor(N / 2)."""
    return num_clients // 2


def majority_vote_merge(values: list[list[np.ndarray]], masks: list[list[np.ndarray]],
                        weights: list[float], prunable: list[bool], average: str = "all"
                        ) -> list[np.ndarray]:
    """Eq. 2: keep entries with >= floor(N/2) votes, sample-weighted average there, 0 elsewhere.

    `values[k][i]`, `masks[k][i]`: client k's tensor i and its local mask (bool, same shape).
    Non-prunable tensors are plain weighted averages.
    """
    w = np.asarray(weights, np.float64)
    need = vote_threshold(len(values))
    merged = []
    for i, p in enumerate(prunable):
        stack = np.stack([np.asarray(v[i], np.float64) for v in values])
        shape = (-1,) + (1,) * (stack.ndim - 1)
        if not p:
            merged.append((np.tensordot(w, stack, axes=1) / w.sum()).astype(np.float32))
            continue
        kept = np.stack([np.asarray(m[i], bool) for m in masks])
        votes = kept.sum(axis=0)
        if average == "keepers":
            wk = kept * w.reshape(shape)
            num = (wk * stack).sum(axis=0)
            den = wk.sum(axis=0)
            avg = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
        else:
            avg = np.tensordot(w, stack * kept, axes=1) / w.sum()
        merged.append(np.where(votes >= need, avg, 0.0).astype(np.float32))
    return merged


def prunable_flags(model: nn.Module) -> list[bool]:
    """For each travelling tensor (canonical order): is it a trainable parameter?"""
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    return [key in trainable for key in travelling_keys(model)]


# --------------------------------------------------------------------------------------------
# Server


def _positions_masks(parts) -> list[np.ndarray]:
    return [st.mask.reshape(st.shape) for st in parts]


class FedSparsifyStrategy(SqueezeStrategy):
    """Server side. `self.mask` is the global mask (bool per prunable tensor, None for the
    others): all True until the first pruning, then only ever shrinking. It is what the
    downlink's positions carry, so zero-initialised biases stay trainable until pruned."""

    def __init__(self, method: FedSparsify, model: nn.Module, **options) -> None:
        super().__init__(method, model, **options)
        self.cfg: FedSparsifyConfig = method.config
        self.schedule = method.schedule
        self.prunable = prunable_flags(model)
        self.params = int(sum(int(np.prod(s)) for s, p in zip(self.shapes, self.prunable) if p))
        self.mask: list[np.ndarray | None] = [np.ones(s, bool) if p else None
                                              for s, p in zip(self.shapes, self.prunable)]
        self.sent_masks: dict[int, list[np.ndarray | None]] = {}   # node -> mask sent this round
        self.local_masks: dict[int, list[np.ndarray | None]] = {}  # node -> its local mask
        self._up_nnz: dict[int, int] = {}
        self._down_cache: tuple[int, bytes] | None = None
        self._metrics: dict[str, Any] = {}

    def kept(self, masks: list[np.ndarray | None]) -> int:
        return int(sum(int(m.sum()) for m in masks if m is not None))

    # -- wire --------------------------------------------------------------------------------
    def encode_down(self, server_round: int, node_id: int, arrays: Arrays) -> RecordDict:
        if self._down_cache is None or self._down_cache[0] != server_round:
            plain = list(arrays.values())
            # values at the global mask's positions (non-prunable tensors: their non-zeros)
            payload = encode_sparse(plain, self.mask, values=self.cfg.values)
            self._down_cache = (server_round, payload)
        self.sent_masks[node_id] = self.mask
        return RecordDict({PAYLOAD_RECORD: pack(SPARSE.stype, self._down_cache[1])})

    def decode_up(self, server_round: int, node_id: int, content: RecordDict) -> Arrays:
        sent = self.sent_masks.get(node_id)
        if sent is None:
            raise CodecError(f"no global mask was sent to node {node_id} this round")
        if self.cfg.variant == "global":
            arrays = decode_masked(unpack(content, MASKED.stype), self.shapes, sent)
            self._up_nnz[node_id] = self.kept(sent)
        else:
            parts = decode_sparse_parts(unpack(content, SPARSE.stype), self.shapes)
            arrays = [st.to_dense() for st in parts]
            masks: list[np.ndarray | None] = []
            for i, (m, g) in enumerate(zip(_positions_masks(parts), sent)):
                if g is None:
                    masks.append(None)
                    continue
                if np.any(m & ~g):
                    raise CodecError(f"tensor {i}: local mask keeps entries outside the "
                                     "global mask")
                masks.append(m)
            self.local_masks[node_id] = masks
            self._up_nnz[node_id] = self.kept(masks)
        return keyed(self.keys, arrays)

    # -- aggregation -------------------------------------------------------------------------
    def aggregate_decoded(self, server_round: int, replies: list[Message]
                          ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        t = server_round
        s_t = self.schedule.sparsity(t)
        prune = self.schedule.prunes(t)
        sent_down = self.kept(self.mask)
        if self.cfg.variant == "local" and prune:
            values = [list(from_arrayrecord(r.content["arrays"]).values()) for r in replies]
            masks = [self.local_masks[r.metadata.src_node_id] for r in replies]
            weights = [float(r.content[METRICS_RECORD]["num-examples"]) for r in replies]
            need = vote_threshold(len(replies))
            new_mask = []
            for i, (g, p) in enumerate(zip(self.mask, self.prunable)):
                if not p:
                    new_mask.append(None)
                    continue
                votes = np.sum([m[i] for m in masks], axis=0)
                new_mask.append(g & (votes >= need))
            merged = majority_vote_merge(values, masks, weights, self.prunable, self.cfg.average)
            merged = apply_masks(merged, new_mask)
            metrics = self.aggregate_metrics(replies)
        else:
            record, metrics = FedAvg.aggregate_train(self, server_round, replies)
            if record is None:
                return None, metrics
            merged = list(from_arrayrecord(record).values())
            new_mask = self.mask
            if self.cfg.variant == "global" and prune:
                new_mask = magnitude_masks(merged, self.prunable, s_t, self.mask)
            merged = apply_masks(merged, new_mask)
        self.mask = new_mask
        kept = self.kept(new_mask)
        participants = len(self.sent_masks)
        up_nnz = int(sum(self._up_nnz.get(r.metadata.src_node_id, 0) for r in replies))
        mask_bits = len(replies) * self.params if self.cfg.variant == "local" else 0
        paper_params = participants * sent_down + up_nnz
        self._metrics = {
            "target_sparsity": s_t,
            "sparsity": 1.0 - kept / self.params,   # of the global mask after this round
            "mask_kept": kept,
            "pruned": prune,
            "nonzeros_down": sent_down,          # entries of the model sent down (per client)
            "nonzeros_up": up_nnz,               # entries sent up, all replies together
            "paper_comm_params": paper_params,   # the paper's count, in parameters
            "paper_comm_bits": 32 * paper_params + mask_bits,
            **({"vote_threshold": vote_threshold(len(replies))}
               if self.cfg.variant == "local" and prune else {}),
        }
        return to_arrayrecord(keyed(self.keys, merged)), metrics

    def end_round(self, server_round: int) -> None:
        # this round's masks never leak into the next one (a failed round included)
        self.sent_masks, self.local_masks, self._up_nnz = {}, {}, {}

    def export_state(self) -> ServerState:
        """The global mask (one bool array per prunable tensor)."""
        return ServerState({str(i): m for i, m in enumerate(self.mask) if m is not None},
                           {"tensors": len(self.mask)})

    def import_state(self, state: ServerState) -> None:
        if int(state.meta["tensors"]) != len(self.mask):
            raise ValueError(f"fedsparsify state has {state.meta['tensors']} tensors, the model "
                             f"{len(self.mask)}")
        for i, p in enumerate(self.prunable):
            if p:
                mask = np.asarray(state.arrays[str(i)], dtype=bool)
                if mask.shape != self.shapes[i]:
                    raise ValueError(f"fedsparsify state: mask {i} has shape {mask.shape}, the "
                                     f"model {self.shapes[i]}")
                self.mask[i] = mask

    def round_metrics(self, server_round: int) -> dict[str, Any]:
        metrics, self._metrics = self._metrics, {}
        return metrics


# --------------------------------------------------------------------------------------------
# Client


class MaskHooks(TrainingHooks):
    """Training under the global mask: the mask multiplies the weights before the first step,
    every gradient (a tensor hook: momentum buffers and weight decay never move a pruned
    entry) and the weights after every optimizer step."""

    def __init__(self, masks: dict[str, np.ndarray]) -> None:
        super().__init__()
        self.masks = masks  # parameter name -> bool mask (only masks that prune something)
        self._on_device: dict[str, torch.Tensor] = {}

    def install(self, model: nn.Module) -> Iterator:
        params = dict(model.named_parameters())
        self._on_device = {key: torch.from_numpy(np.ascontiguousarray(m)).to(
            params[key].device, params[key].dtype) for key, m in self.masks.items()}
        handles = [params[key].register_hook(lambda g, m=m: g * m)
                   for key, m in self._on_device.items()]
        self.after_step(model)
        return iter(handles)

    @torch.no_grad()
    def after_step(self, model: nn.Module) -> None:
        params = dict(model.named_parameters())
        for key, m in self._on_device.items():
            params[key].mul_(m)


class FedSparsifyClient(ClientSide):
    def __init__(self, method: FedSparsify) -> None:
        super().__init__(method)
        self.cfg: FedSparsifyConfig = method.config
        self.schedule = method.schedule
        self.global_masks: list[np.ndarray | None] = []

    def receive(self, exchange: str, content: RecordDict, state: RecordDict) -> Arrays:
        model = self.method.structure()
        keys = travelling_keys(model)
        parts = decode_sparse_parts(unpack(content, SPARSE.stype), expected_shapes(model))
        # the global mask = the downlink's positions (never `value != 0`)
        self.global_masks = [st.mask.reshape(st.shape) if p else None
                             for st, p in zip(parts, prunable_flags(model))]
        self.hooks = MaskHooks({key: m for key, m in zip(keys, self.global_masks)
                                if m is not None and not m.all()})
        return keyed(keys, [st.to_dense() for st in parts])

    def send(self, exchange: str, arrays: Arrays, state: RecordDict) -> RecordDict:
        arrays = list(arrays.values())
        if self.cfg.variant == "global":
            payload = encode_masked(arrays, self.global_masks, values=self.cfg.values)
            return RecordDict({PAYLOAD_RECORD: pack(MASKED.stype, payload)})
        masks = self.global_masks
        if self.schedule.prunes(self.server_round):
            prunable = [m is not None for m in masks]
            masks = magnitude_masks(arrays, prunable, self.schedule.sparsity(self.server_round),
                                    masks)
        payload = encode_sparse(apply_masks(arrays, masks), masks, values=self.cfg.values)
        return RecordDict({PAYLOAD_RECORD: pack(SPARSE.stype, payload)})


# --------------------------------------------------------------------------------------------


@paper_claim("FedSparsify", "x3.04 less communication at sparsity 0.9 (473 -> 155 M params)",
             setting="FashionMNIST non-IID(2), 10 clients, 784-128-128-10, E = 4, T = 200",
             needs=("fedsparsify-global",))
def _fewer_bytes(runs: Runs, ours: list[str]) -> Measured:
    """The first Global run's message bytes against FedAvg's over the same rounds."""
    label, ref = ours[0], runs.reference
    ratio = runs.message_total(ref) / runs.message_total(label)
    return Measured(f"{label}: x{ratio:.2f} fewer message bytes (up + down) over "
                    f"{runs.rounds(label)} rounds, accuracy {acc(runs.final_accuracy(label))} "
                    f"vs {acc(runs.final_accuracy(ref))}",
                    "holds" if ratio >= 3.04 else "does not hold")


@register("fedsparsify")
class FedSparsify(Method):
    Config = FedSparsifyConfig
    Strategy = FedSparsifyStrategy
    Client = FedSparsifyClient
