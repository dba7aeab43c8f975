"""The round loop of the ServerApp.

Flower's `Strategy.start` keeps the previous model when aggregation returns None and calls
central evaluation every round; this loop instead runs each round's exchanges in order (the
strategy's `exchanges(t)`, then "train"), each metered as its own phase, fails the run (or
skips the round, as configured) when fewer than `min-nodes` replies of an exchange succeed,
counts and logs every failed reply, evaluates centrally every `eval-every` rounds and on the
clients' local test splits every `local-eval-every` rounds, and writes a results row per
round (and a checkpoint every `checkpoint-every`). Before each round it identifies nodes that
connected since the last one: a restarted SuperNode (new node id, same partition id) takes
its partition back and the strategy forgets what it mirrored of it. It calls the strategy's
verbs, so methods stay Flower strategies.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from logging import ERROR, INFO, WARNING
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.supercore import log

from fedsqueeze.strategies.base import EVALUATE, TRAIN, Failure, SqueezeStrategy
from fedsqueeze.strategies.payload import IDENTITY_RECORD, METRICS_RECORD, identity_of
from fedsqueeze.strategies.sampling import ClientDirectory
from fedsqueeze.strategies.settings import RunSettings
from fedsqueeze.strategies.tensors import from_arrayrecord

from .checkpoint import save_checkpoint
from .metering import DOWN, UP, MeteredGrid
from .results import ResultsWriter, fmt_bytes


class RunFailure(RuntimeError):
    """The run cannot go on (too few replies, nodes missing, ...)."""


def identify(grid: MeteredGrid, node_ids: list[int], timeout: float
             ) -> tuple[dict[int, dict[str, Any]], dict[int, str]]:
    """The identity query: {node_id: what it reported}, {node_id: why it did not}."""
    queries = [Message(RecordDict({"config": ConfigRecord({"query": "identity"})}),
                       dst_node_id=node_id, message_type=MessageType.QUERY)
               for node_id in node_ids]
    reported: dict[int, dict[str, Any]] = {}
    errors: dict[int, str] = {}
    for reply in grid.send_and_receive(queries, timeout=timeout):
        node_id = reply.metadata.src_node_id
        if reply.has_error():
            errors[node_id] = f"could not start its ClientApp: {reply.error.reason}"
            continue
        try:
            info = dict(reply.content.config_records[IDENTITY_RECORD])
            info["partition-id"] = identity_of(reply.content)
        except (KeyError, ValueError, TypeError) as err:
            errors[node_id] = f"sent an undecodable identity: {err}"
            continue
        reported[node_id] = info
    for node_id in node_ids:
        if node_id not in reported and node_id not in errors:
            errors[node_id] = f"did not answer the identity query within {timeout:.0f} s"
    return reported, errors


def _examples(info: dict[str, Any]) -> int | None:
    value = info.get("num_examples")
    return int(value) if isinstance(value, (int, float)) else None


def discover_clients(grid: MeteredGrid, settings: RunSettings
                     ) -> tuple[ClientDirectory, dict[int, dict[str, Any]], tuple[float, float]]:
    """One small query exchange: every connected node reports its partition id.

    Returns the directory, what each client reported (device, engine, ...) and the exchange's
    wall-clock window.
    """
    grid.phase = "discovery"
    started_unix = time.time()
    deadline = time.monotonic() + settings.round_timeout
    while len(node_ids := sorted(grid.get_node_ids())) < settings.min_nodes:
        if time.monotonic() > deadline:
            raise RunFailure(f"only {len(node_ids)} nodes connected after "
                             f"{settings.round_timeout:.0f} s; min-nodes = {settings.min_nodes}")
        log(INFO, "waiting for nodes: %d connected, min-nodes %d", len(node_ids),
            settings.min_nodes)
        time.sleep(0.5)
    reported, errors = identify(grid, node_ids, settings.round_timeout)
    if errors:
        raise RunFailure("; ".join(f"node {n} {why}" for n, why in sorted(errors.items())))
    mapping = {node_id: int(info["partition-id"]) for node_id, info in reported.items()}
    details = {int(info.pop("partition-id")): info for info in reported.values()}
    for partition_id in sorted(details):
        info = details[partition_id]
        log(INFO, "client partition %d: device %s", partition_id, info.get("device", "?"))
    directory = ClientDirectory(mapping, {p: e for p, info in details.items()
                                          if (e := _examples(info)) is not None})
    return directory, details, (started_unix, time.time())


def rejoin_clients(grid: MeteredGrid, strategy: SqueezeStrategy, settings: RunSettings,
                   refused: set[int]) -> list[int]:
    """Identify nodes that connected since the last round and bind their partitions to them:
    a restarted SuperNode has a new node id and the same partition id, and takes over from
    its old node (which the SuperLink may not yet have declared dead); the strategy forgets
    what it mirrored of a rejoined client (its `context.state` died with the old SuperNode).
    A node that cannot identify itself is added to `refused` and never asked again (each ask
    could cost the round a timeout). Returns the partitions that rejoined or joined."""
    directory = strategy.directory
    assert directory is not None
    new = sorted(n for n in grid.get_node_ids() if directory.get(n) is None and n not in refused)
    if not new:
        return []
    reported, errors = identify(grid, new, min(settings.round_timeout, 60.0))
    for node_id, why in sorted(errors.items()):
        log(WARNING, "new node %d %s; it is left out of this run", node_id, why)
        refused.add(node_id)
    joined = []
    for node_id, info in sorted(reported.items()):
        partition_id = int(info["partition-id"])
        if directory.add(node_id, partition_id, _examples(info)):
            strategy.client_state_lost(partition_id)
            log(INFO, "partition %d rejoined as node %d", partition_id, node_id)
        else:
            log(INFO, "partition %d joined as node %d", partition_id, node_id)
        joined.append(partition_id)
    return sorted(joined)


def per_client_row(directory: ClientDirectory, traffic: dict, replies: list[Message]
                   ) -> dict[str, dict[str, Any]]:
    """Bytes per client and direction, plus what each client reported about itself."""
    rows: dict[str, dict[str, Any]] = {
        str(directory.get(node_id)): {
            f"{layer}_{d}": getattr(t[d], layer)
            for layer in ("payload", "message") for d in (UP, DOWN)}
        for node_id, t in sorted(traffic.items())}
    for reply in replies:
        if reply.has_content() and METRICS_RECORD in reply.content.metric_records:
            metrics = reply.content.metric_records[METRICS_RECORD]
            row = rows.setdefault(str(directory.get(reply.metadata.src_node_id)), {})
            row.update({key.replace("-", "_"): value for key, value in metrics.items()})
    return rows


def evaluate_extra(strategy: SqueezeStrategy, server_round: int,
                   evaluate_fn: Callable[[dict], tuple[float, float]]) -> dict[str, float]:
    """`accuracy_<name>` (mean) and `accuracy_<name>_min` of the strategy's extra models."""
    row: dict[str, float] = {}
    for name, models in strategy.models_to_evaluate(server_round).items():
        accuracies = [evaluate_fn(model)[1] for model in models]
        if accuracies:
            row[f"accuracy_{name}"] = sum(accuracies) / len(accuracies)
            row[f"accuracy_{name}_min"] = min(accuracies)
    return row


def phase_of(exchange: str, server_round: int) -> str:
    return f"{exchange}:{server_round}"


class RoundRunner:
    """Runs the rounds of one run against a (metered) grid and writes their rows."""

    def __init__(self, grid: MeteredGrid, strategy: SqueezeStrategy, settings: RunSettings,
                 writer: ResultsWriter, evaluate_fn: Callable[[dict], tuple[float, float]],
                 count_nonzeros: Callable[[dict], tuple[int, int]], first_round: int = 1
                 ) -> None:
        self.grid = grid
        self.strategy = strategy
        self.settings = settings
        self.writer = writer
        self.evaluate_fn = evaluate_fn
        self.count_nonzeros = count_nonzeros
        self.first_round = first_round
        self.last_round = first_round - 1  # the last round whose row was written
        self.refused: set[int] = set()     # new nodes that could not identify themselves
        self.cumulative = {d: sum(r[f"message_{d}"] for r in writer.rows) for d in ("up", "down")}
        self.started = time.monotonic()

    def _exchange(self, name: str, server_round: int, node_ids: list[int]
                  ) -> tuple[list[Message], list[Failure]]:
        """Send one exchange's messages; (replies, nodes that never answered)."""
        s, strategy = self.settings, self.strategy
        self.grid.phase = phase_of(name, server_round)
        messages = strategy.configure_exchange(name, server_round, node_ids)
        replies = self.grid.send_and_receive(messages, timeout=s.round_timeout)
        answered = {r.metadata.src_node_id for r in replies}
        silent = [Failure(n, name, f"no reply within {s.round_timeout:.0f} s")
                  for n in node_ids if n not in answered]
        return replies, silent

    def run_round(self, server_round: int, arrays: ArrayRecord) -> ArrayRecord:
        """One round: its exchanges, aggregation, evaluations and results row."""
        s, strategy = self.settings, self.strategy
        round_started = time.monotonic()
        started_unix = time.time()
        rejoin_phase = phase_of("discovery", server_round)
        self.grid.phase = rejoin_phase
        rejoined = rejoin_clients(self.grid, strategy, s, self.refused)
        node_ids = strategy.sample(server_round)
        sampled = list(node_ids)
        strategy.begin(server_round, from_arrayrecord(arrays))
        silent: list[Failure] = []
        phases: list[str] = [rejoin_phase]
        all_replies: list[Message] = []
        new_arrays = train_metrics = None
        name = TRAIN
        sent: list[int] = []
        declared = strategy.exchanges(server_round)
        timing: dict[str, float] = {}  # where the round's seconds went
        try:
            for name in (*declared, TRAIN):
                phases.append(phase_of(name, server_round))
                sent = list(node_ids)
                exchange_started = time.monotonic()
                replies, missing = self._exchange(name, server_round, node_ids)
                timing[f"exchange_{name}"] = time.monotonic() - exchange_started
                silent += missing
                all_replies += replies
                if name == TRAIN:
                    aggregate_started = time.monotonic()
                    new_arrays, train_metrics = strategy.aggregate_train(server_round, replies)
                    timing["aggregate"] = time.monotonic() - aggregate_started
                else:
                    node_ids = strategy.aggregate_exchange(name, server_round, replies)
                    if len(node_ids) < s.min_nodes:
                        break
        finally:
            strategy.end(server_round)
        failures = list(strategy.failures) + silent
        if new_arrays is None:
            ok = len(sent) - len({f.node_id for f in failures
                                  if f.exchange == name and f.node_id in sent})
            reason = (f"round {server_round}: {ok} of {len(sent)} replies succeeded in exchange "
                      f"{name!r}, min-nodes = {s.min_nodes}; failures: "
                      + "; ".join(f"node {f.node_id} ({f.exchange}): {f.reason}"
                                  for f in failures))
            if s.on_too_few_replies == "fail":
                raise RunFailure(reason)
            log(WARNING, "%s; skipping the round (on-too-few-replies = skip)", reason)
        else:
            arrays = new_arrays

        plain = from_arrayrecord(arrays)
        loss = accuracy = None
        extra_accuracy: dict[str, float | None] = {}
        if server_round % s.eval_every == 0 or server_round == s.num_server_rounds:
            evaluate_started = time.monotonic()
            loss, accuracy = self.evaluate_fn(plain)
            timing["evaluate"] = time.monotonic() - evaluate_started
            extra_accuracy = evaluate_extra(strategy, server_round, self.evaluate_fn)
        local = self._evaluate_locally(server_round, arrays) \
            if s.evaluates_locally(server_round) else {}
        nonzeros, params = self.count_nonzeros(plain)
        directory = strategy.directory
        totals = self.grid.totals(phases)
        traffic = self.grid.traffic(*phases)
        row: dict[str, Any] = {
            "round": server_round,
            "accuracy": accuracy,
            "loss": loss,
            **totals,
            "wire_up": None,
            "wire_down": None,
            "nonzeros": nonzeros,
            "params": params,
            "seconds": time.monotonic() - round_started,
            "timing": timing,
            "started_unix": started_unix,  # wall-clock window: the launcher attributes
            "ended_unix": time.time(),     # wire bytes to rounds with it
            "clients": sorted(directory.partition_of(n) for n in sampled),
            "rejoined": rejoined,
            "failed_replies": len(failures),
            "failures": [{"partition_id": directory.get(f.node_id),
                          "exchange": f.exchange, "reason": f.reason} for f in failures],
            "skipped": new_arrays is None,
            "train_loss": None if train_metrics is None else train_metrics.get("train-loss"),
            "per_client": per_client_row(directory, traffic, all_replies),
            **({"exchanges": {p.split(":")[0]: self.grid.totals([p]) for p in phases[1:]}}
               if declared else {}),
            **strategy.round_metrics(server_round),
            **extra_accuracy,
            **local,
        }
        self.writer.write_round(row)
        self.last_round = server_round
        self._log_progress(row, failures)
        every = s.checkpoint_every
        if every and (server_round % every == 0 or server_round == s.num_server_rounds):
            save_checkpoint(self.writer.run_dir, server_round, plain, strategy.export_state())
        return arrays

    def _evaluate_locally(self, server_round: int, arrays: ArrayRecord) -> dict[str, Any]:
        """The local-evaluation exchange: its accuracies and bytes (not in the round's totals:
        measuring costs bytes no training method needs)."""
        s, strategy = self.settings, self.strategy
        failures_before = len(strategy.failures)
        self.grid.phase = phase_of(EVALUATE, server_round)
        messages = list(strategy.configure_evaluate(server_round, arrays, ConfigRecord(),
                                                    self.grid))
        replies = self.grid.send_and_receive(messages, timeout=s.round_timeout)
        metrics = strategy.aggregate_evaluate(server_round, replies)
        failed = len(strategy.failures) - failures_before + len(messages) - len(replies)
        totals = self.grid.totals([self.grid.phase])
        row: dict[str, Any] = {f"eval_{k}": v for k, v in totals.items()}
        row.update({"accuracy_local": None, "accuracy_local_min": None, "loss_local": None,
                    "local_evaluations": 0, "failed_local_evaluations": failed})
        if metrics is not None:
            row.update(dict(metrics))
        return row

    def _log_progress(self, row: dict[str, Any], failures: list[Failure]) -> None:
        total, server_round = self.settings.num_server_rounds, row["round"]
        self.cumulative["up"] += row["message_up"]
        self.cumulative["down"] += row["message_down"]
        elapsed = time.monotonic() - self.started
        eta = elapsed / server_round * (total - server_round)
        accuracy = row["accuracy"]
        local = row.get("accuracy_local")
        log(INFO, "round %d/%d  accuracy %s%s  failed %d  message bytes so far up %s down %s  "
            "%.1f s/round  ETA %.0f s", server_round, total,
            "-" if accuracy is None else f"{accuracy:.4f}",
            "" if local is None else f"  local {local:.4f}", len(failures),
            fmt_bytes(self.cumulative["up"]), fmt_bytes(self.cumulative["down"]),
            row["seconds"], eta)
        directory = self.strategy.directory
        for f in failures:
            log(ERROR, "round %d: partition %s failed (%s): %s", server_round,
                directory.get(f.node_id), f.exchange, f.reason)

    def run(self, arrays: ArrayRecord) -> ArrayRecord:
        """Run rounds `first_round`..`num-server-rounds`; return the final global arrays."""
        for server_round in range(self.first_round, self.settings.num_server_rounds + 1):
            arrays = self.run_round(server_round, arrays)
        return arrays
