"""The round loop of the ServerApp.

Flower's `Strategy.start` keeps the previous model when aggregation returns None and calls
central evaluation every round; this loop instead fails the run (or skips the round, as
configured) when fewer than `min-nodes` replies succeed, counts and logs every failed reply,
evaluates every `eval-every` rounds, and writes a results row per round. It calls the
strategy's own verbs (`configure_train`, `aggregate_train`), so methods stay Flower strategies.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from logging import ERROR, INFO, WARNING
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.supercore import log

from fedsqueeze.strategies.base import SqueezeStrategy
from fedsqueeze.strategies.payload import IDENTITY_RECORD, METRICS_RECORD, identity_of
from fedsqueeze.strategies.sampling import ClientDirectory
from fedsqueeze.strategies.settings import RunSettings
from fedsqueeze.strategies.tensors import from_arrayrecord

from .metering import DOWN, UP, MeteredGrid
from .results import ResultsWriter, fmt_bytes


class RunFailure(RuntimeError):
    """The run cannot go on (too few replies, nodes missing, ...)."""


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
    queries = [Message(RecordDict({"config": ConfigRecord({"query": "identity"})}),
                       dst_node_id=node_id, message_type=MessageType.QUERY)
               for node_id in node_ids]
    replies = grid.send_and_receive(queries, timeout=settings.round_timeout)
    mapping: dict[int, int] = {}
    details: dict[int, dict[str, Any]] = {}
    for reply in replies:
        node_id = reply.metadata.src_node_id
        if reply.has_error():
            raise RunFailure(f"node {node_id} could not start its ClientApp: "
                             f"{reply.error.reason}")
        mapping[node_id] = identity_of(reply.content)
        details[mapping[node_id]] = dict(reply.content.config_records[IDENTITY_RECORD])
    missing = sorted(set(node_ids) - set(mapping))
    if missing:
        raise RunFailure(f"nodes {missing} did not answer the identity query within "
                         f"{settings.round_timeout:.0f} s")
    for partition_id in sorted(details):
        info = details[partition_id]
        log(INFO, "client partition %d: device %s", partition_id, info.get("device", "?"))
    return ClientDirectory(mapping), details, (started_unix, time.time())


def per_client_row(directory: ClientDirectory, traffic: dict, replies: list[Message]
                   ) -> dict[str, dict[str, Any]]:
    """Bytes per client and direction, plus what each client reported about itself."""
    rows: dict[str, dict[str, Any]] = {
        str(directory.partition_of(node_id)): {
            f"{layer}_{d}": getattr(t[d], layer)
            for layer in ("payload", "message") for d in (UP, DOWN)}
        for node_id, t in sorted(traffic.items())}
    for reply in replies:
        if reply.has_content() and METRICS_RECORD in reply.content.metric_records:
            metrics = reply.content.metric_records[METRICS_RECORD]
            row = rows.setdefault(str(directory.partition_of(reply.metadata.src_node_id)), {})
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


def run_rounds(
    grid: MeteredGrid,
    strategy: SqueezeStrategy,
    arrays: ArrayRecord,
    settings: RunSettings,
    writer: ResultsWriter,
    evaluate_fn: Callable[[dict], tuple[float, float]],
    count_nonzeros: Callable[[dict], tuple[int, int]],
) -> ArrayRecord:
    """Run `num-server-rounds` rounds; return the final global arrays."""
    total = settings.num_server_rounds
    started = time.monotonic()
    cumulative = {"up": 0, "down": 0}
    for server_round in range(1, total + 1):
        round_started = time.monotonic()
        started_unix = time.time()
        grid.phase = f"train:{server_round}"
        messages = list(strategy.configure_train(server_round, arrays, ConfigRecord(), grid))
        sent_to = {m.metadata.dst_node_id for m in messages}
        replies = grid.send_and_receive(messages, timeout=settings.round_timeout)
        new_arrays, train_metrics = strategy.aggregate_train(server_round, replies)
        failures = list(strategy.failures)
        answered = {r.metadata.src_node_id for r in replies}
        failures += [(n, f"no reply within {settings.round_timeout:.0f} s")
                     for n in sorted(sent_to - answered)]
        ok = len(sent_to) - len(failures)
        if new_arrays is None:
            reason = (f"round {server_round}: {ok} of {len(sent_to)} replies succeeded, "
                      f"min-nodes = {settings.min_nodes}; failures: "
                      + "; ".join(f"node {n}: {why}" for n, why in failures))
            if settings.on_too_few_replies == "fail":
                raise RunFailure(reason)
            log(WARNING, "%s; skipping the round (on-too-few-replies = skip)", reason)
        else:
            arrays = new_arrays

        plain = from_arrayrecord(arrays)
        loss = accuracy = None
        extra_accuracy: dict[str, float | None] = {}
        if server_round % settings.eval_every == 0 or server_round == total:
            loss, accuracy = evaluate_fn(plain)
            extra_accuracy = evaluate_extra(strategy, server_round, evaluate_fn)
        nonzeros, params = count_nonzeros(plain)
        traffic = grid.traffic(grid.phase)
        totals = grid.totals([grid.phase])
        seconds = time.monotonic() - round_started
        directory = strategy.directory
        row: dict[str, Any] = {
            "round": server_round,
            "accuracy": accuracy,
            "loss": loss,
            **totals,
            "wire_up": None,
            "wire_down": None,
            "nonzeros": nonzeros,
            "params": params,
            "seconds": seconds,
            "started_unix": started_unix,  # wall-clock window: the launcher attributes
            "ended_unix": time.time(),     # wire bytes to rounds with it
            "clients": sorted(directory.partition_of(n) for n in sent_to),
            "failed_replies": len(failures),
            "failures": [{"partition_id": directory.partition_of(n), "reason": why}
                         for n, why in failures],
            "skipped": new_arrays is None,
            "train_loss": None if train_metrics is None else train_metrics.get("train-loss"),
            "per_client": per_client_row(directory, traffic, replies),
            **strategy.round_metrics(server_round),
            **extra_accuracy,
        }
        writer.write_round(row)
        cumulative["up"] += totals["message_up"]
        cumulative["down"] += totals["message_down"]
        elapsed = time.monotonic() - started
        eta = elapsed / server_round * (total - server_round)
        log(INFO, "round %d/%d  accuracy %s  failed %d  message bytes so far up %s down %s  "
            "%.1f s/round  ETA %.0f s", server_round, total,
            "-" if accuracy is None else f"{accuracy:.4f}", len(failures),
            fmt_bytes(cumulative["up"]), fmt_bytes(cumulative["down"]), seconds, eta)
        if failures:
            for n, why in failures:
                log(ERROR, "round %d: partition %d failed: %s", server_round,
                    directory.partition_of(n), why)
    return arrays
