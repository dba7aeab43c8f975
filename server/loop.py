"""The round loop of the ServerApp: Flower's `Strategy.start`, plus what it lacks.

Each round calls the strategy's Flower verbs as `start` does (`configure_train`, which runs a
method's earlier exchanges itself, the grid's `send_and_receive`, `aggregate_train`;
`configure_evaluate` on local-evaluation rounds). Around them, what `start` lacks and the app
needs:

- clients by partition id: a discovery exchange before round 1 (and before each round for
  nodes that joined since: a restarted SuperNode takes its partition back and the strategy
  forgets what it mirrored of it), seeded sampling over partition ids (the strategy is given
  a view of the grid holding the round's sample), replies aggregated in partition order;
- the app's reply checks: a reply must carry its node's partition id and the example count
  the node reported at discovery (`ReplyGuard`); the strategy checks the rest;
- a run that fails (or a round that is skipped, as configured) when fewer than `min-nodes`
  replies succeed, every failure counted and logged with its reason;
- central evaluation every `eval-every` rounds (and of the strategy's extra models, such as
  the broadcast model clients hold), the local evaluation's mean and minimum, a results row
  per round with bytes per phase from the metered grid, checkpoints and resume.

Extras a strategy may offer (ours do; Flower's own need none): `failures`, `client_key`,
`round_metrics(t)`, `models_to_evaluate(t)`, `export_state()` / `import_state(state)`,
`client_state_lost(client)`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from logging import ERROR, INFO, WARNING
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from fedsqueeze.strategies.base import EVALUATE, TRAIN
from fedsqueeze.strategies.metering import layer_bytes
from fedsqueeze.strategies.payload import IDENTITY_RECORD, METRICS_RECORD, identity_of
from fedsqueeze.strategies.replies import Failure, weight_problem
from fedsqueeze.strategies.sampling import ClientDirectory
from fedsqueeze.strategies.settings import RunSettings
from fedsqueeze.strategies.state import ServerState
from fedsqueeze.strategies.tensors import from_arrayrecord
from fedsqueeze.strategies.training import Evaluation

from .checkpoint import save_checkpoint
from .evaluation import local_evaluation
from .metering import MeteredGrid
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


def rejoin_clients(grid: MeteredGrid, directory: ClientDirectory, strategy: Strategy,
                   settings: RunSettings, refused: set[int]) -> list[int]:
    """Identify nodes that connected since the last round and bind their partitions to them:
    a restarted SuperNode has a new node id and the same partition id, and takes over from
    its old node (which the SuperLink may not yet have declared dead); the strategy forgets
    what it mirrored of a rejoined client (its `context.state` died with the old SuperNode).
    A node that cannot identify itself is added to `refused` and never asked again (each ask
    could cost the round a timeout). Returns the partitions that rejoined or joined."""
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
            client_state_lost(strategy, partition_id)
            log(INFO, "partition %d rejoined as node %d", partition_id, node_id)
        else:
            log(INFO, "partition %d joined as node %d", partition_id, node_id)
        joined.append(partition_id)
    return sorted(joined)


def client_state_lost(strategy: Strategy, partition_id: int) -> None:
    if hasattr(strategy, "client_state_lost"):
        strategy.client_state_lost(partition_id)


def export_state(strategy: Strategy) -> ServerState:
    return strategy.export_state() if hasattr(strategy, "export_state") else ServerState()


def key_by_partition(strategy: Strategy, directory: ClientDirectory) -> None:
    """The strategy mirrors clients by partition id (which survives a SuperNode restart)."""
    if hasattr(strategy, "client_key"):
        strategy.client_key = lambda node_id: (
            node_id if (partition := directory.get(node_id)) is None else partition)


class NodeView:
    """The grid as a strategy sees it in one round: only the round's sampled nodes."""

    def __init__(self, grid: MeteredGrid, node_ids: list[int]) -> None:
        self._grid, self._node_ids = grid, list(node_ids)

    def get_node_ids(self) -> list[int]:
        return list(self._node_ids)

    def __getattr__(self, name: str):  # send_and_receive, push/pull, run, ...
        return getattr(self._grid, name)


class ReplyGuard:
    """The app's checks of a train reply: it carries the partition id of its node and, as
    its weight, the example count the node reported at discovery."""

    def __init__(self, directory: ClientDirectory) -> None:
        self.directory = directory

    def problem(self, reply: Message) -> str | None:
        if reply.has_error():
            return None  # the strategy counts it
        node_id = reply.metadata.src_node_id
        try:
            partition_id = identity_of(reply.content)
        except (KeyError, ValueError) as err:  # a CodecError is a ValueError
            return f"undecodable reply: {err}"
        own = self.directory.get(node_id)
        if own is not None and partition_id != own:
            return f"reports partition-id {partition_id}, but the node holds partition {own}"
        problem = weight_problem(reply, "num-examples")
        if problem:
            return problem
        value = reply.content.metric_records[METRICS_RECORD]["num-examples"]
        expected = None if own is None else self.directory.examples_of(own)
        if expected is not None and value != expected:
            return (f"num-examples = {value!r} differs from the {expected} examples the node "
                    "reported at discovery")
        return None


def per_client_row(directory: ClientDirectory, traffic: dict, replies: list[Message]
                   ) -> dict[str, dict[str, Any]]:
    """Bytes per client and direction, plus what each client reported about itself."""
    rows: dict[str, dict[str, Any]] = {
        str(directory.get(node_id)): layer_bytes(t) for node_id, t in sorted(traffic.items())}
    for reply in replies:
        if reply.has_content() and METRICS_RECORD in reply.content.metric_records:
            metrics = reply.content.metric_records[METRICS_RECORD]
            row = rows.setdefault(str(directory.get(reply.metadata.src_node_id)), {})
            row.update({key.replace("-", "_"): value for key, value in metrics.items()})
    return rows


def evaluate_extra(strategy: Strategy, server_round: int,
                   evaluate_fn: Callable[..., Evaluation]) -> dict[str, float]:
    """`accuracy_<name>` (mean) and `accuracy_<name>_min` of the strategy's extra models."""
    row: dict[str, float] = {}
    extra = getattr(strategy, "models_to_evaluate", lambda t: {})(server_round)
    for name, models in extra.items():
        accuracies = [evaluate_fn(model, metrics=False).accuracy for model in models]
        if accuracies:
            row[f"accuracy_{name}"] = sum(accuracies) / len(accuracies)
            row[f"accuracy_{name}_min"] = min(accuracies)
    return row


def phase_of(exchange: str, server_round: int) -> str:
    """The phase (the messages' group id) of an exchange of a round."""
    return f"{server_round}:{exchange}"


class RoundRunner:
    """Runs the rounds of one run against a (metered) grid and writes their rows."""

    def __init__(self, grid: MeteredGrid, strategy: Strategy, settings: RunSettings,
                 writer: ResultsWriter, evaluate_fn: Callable[..., Evaluation],
                 count_nonzeros: Callable[[dict], tuple[int, int]], first_round: int = 1
                 ) -> None:
        self.grid = grid
        self.strategy = strategy
        self.settings = settings
        self.writer = writer
        self.evaluate_fn = evaluate_fn
        self.count_nonzeros = count_nonzeros
        self.first_round = first_round
        self.directory: ClientDirectory | None = None  # set after discovery
        self.last_round = first_round - 1  # the last round whose row was written
        self.refused: set[int] = set()     # new nodes that could not identify themselves
        self.cumulative = {d: sum(r[f"message_{d}"] for r in writer.rows) for d in ("up", "down")}
        self.started = time.monotonic()

    def _train(self, server_round: int, arrays: ArrayRecord, node_ids: list[int]
               ) -> tuple[ArrayRecord | None, Any, list[Message], list[Failure]]:
        """The strategy's round on the sampled nodes: (new arrays or None, train metrics,
        the train replies, the app's failures)."""
        s, strategy, directory = self.settings, self.strategy, self.directory
        view = NodeView(self.grid, node_ids)
        messages = list(strategy.configure_train(server_round, arrays, ConfigRecord(), view))
        replies = list(self.grid.send_and_receive(messages, timeout=s.round_timeout)) \
            if messages else []
        answered = {r.metadata.src_node_id for r in replies}
        failures = [Failure(m.metadata.dst_node_id, TRAIN,
                            f"no reply within {s.round_timeout:.0f} s")
                    for m in messages if m.metadata.dst_node_id not in answered]
        guard, kept = ReplyGuard(directory), []
        for reply in replies:
            problem = guard.problem(reply)
            if problem is None:
                kept.append(reply)
            else:
                failures.append(Failure(reply.metadata.src_node_id, TRAIN, problem))
        kept.sort(key=lambda r: (directory.get(r.metadata.src_node_id) is None,
                                 directory.get(r.metadata.src_node_id) or 0))
        started = time.monotonic()
        new_arrays, metrics = strategy.aggregate_train(server_round, kept)
        self._aggregate_seconds = time.monotonic() - started
        return new_arrays, metrics, replies, failures

    def run_round(self, server_round: int, arrays: ArrayRecord) -> ArrayRecord:
        """One round: its exchanges, aggregation, evaluations and results row."""
        s, strategy, directory = self.settings, self.strategy, self.directory
        assert directory is not None, "discover the clients before round 1"
        round_started = time.monotonic()
        started_unix = time.time()
        self.grid.phase = phase_of("discovery", server_round)
        rejoined = rejoin_clients(self.grid, directory, strategy, s, self.refused)
        sampled = directory.sample(server_round, s.fraction_train, s.min_nodes, s.seed)
        new_arrays, train_metrics, replies, failures = self._train(server_round, arrays,
                                                                   sampled)
        failures = failures + list(getattr(strategy, "failures", []))
        phases = self.grid.phases_of_round(server_round)
        exchanges = [p.split(":", 1)[1] for p in phases
                     if not p.endswith((":discovery", f":{EVALUATE}"))]
        if new_arrays is None:
            name = exchanges[-1] if exchanges else TRAIN
            sent = self.grid.nodes_of(phase_of(name, server_round))
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

        timing: dict[str, float] = {f"exchange_{name}": self.grid.seconds[
            phase_of(name, server_round)] for name in exchanges}
        timing["aggregate"] = self._aggregate_seconds
        plain = from_arrayrecord(arrays)
        loss = accuracy = None
        metrics: dict[str, float] = {}
        extra_accuracy: dict[str, float | None] = {}
        if server_round % s.eval_every == 0 or server_round == s.num_server_rounds:
            evaluate_started = time.monotonic()
            loss, accuracy, metrics = self.evaluate_fn(plain)
            timing["evaluate"] = time.monotonic() - evaluate_started
            extra_accuracy = evaluate_extra(strategy, server_round, self.evaluate_fn)
        local = self._evaluate_locally(server_round, arrays) \
            if s.evaluates_locally(server_round) else {}
        nonzeros, params = self.count_nonzeros(plain)
        round_phases = [phase_of("discovery", server_round)] + [
            phase_of(name, server_round) for name in exchanges]
        totals = self.grid.totals(round_phases)
        traffic = self.grid.traffic(*round_phases)
        row: dict[str, Any] = {
            "round": server_round,
            "accuracy": accuracy,
            "loss": loss,
            **({"metrics": metrics} if metrics else {}),
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
            "per_client": per_client_row(directory, traffic, replies),
            **({"exchanges": {name: self.grid.totals([phase_of(name, server_round)])
                              for name in exchanges}} if exchanges not in ([], [TRAIN]) else {}),
            **getattr(strategy, "round_metrics", lambda t: {})(server_round),
            **extra_accuracy,
            **local,
        }
        self.writer.write_round(row)
        self.last_round = server_round
        self._log_progress(row, failures)
        every = s.checkpoint_every
        if every and (server_round % every == 0 or server_round == s.num_server_rounds):
            save_checkpoint(self.writer.run_dir, server_round, plain, export_state(strategy))
        return arrays

    def _evaluate_locally(self, server_round: int, arrays: ArrayRecord) -> dict[str, Any]:
        """The local-evaluation exchange: its accuracies and bytes (not in the round's totals:
        measuring costs bytes no training method needs)."""
        s, directory = self.settings, self.directory
        wanted = s.local_eval_clients or len(directory)
        view = NodeView(self.grid, directory.choose(server_round, wanted, s.seed, 1))
        messages = list(self.strategy.configure_evaluate(server_round, arrays, ConfigRecord(),
                                                         view))
        replies = list(self.grid.send_and_receive(messages, timeout=s.round_timeout))
        sent = {m.metadata.dst_node_id: m.metadata.group_id for m in messages}
        metrics, rejected = local_evaluation(replies, sent)
        for reply, reason in rejected:
            log(WARNING, "node %d (%s): %s", reply.metadata.src_node_id, EVALUATE, reason)
        phase = phase_of(EVALUATE, server_round)
        row: dict[str, Any] = {f"eval_{k}": v for k, v in self.grid.totals([phase]).items()}
        row.update({"accuracy_local": None, "accuracy_local_min": None, "loss_local": None,
                    "local_evaluations": 0,
                    "failed_local_evaluations": len(rejected) + len(messages) - len(replies)})
        if metrics is not None:
            row.update(metrics)
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
        for f in failures:
            log(ERROR, "round %d: partition %s failed (%s): %s", server_round,
                self.directory.get(f.node_id), f.exchange, f.reason)

    def run(self, arrays: ArrayRecord) -> ArrayRecord:
        """Run rounds `first_round`..`num-server-rounds`; return the final global arrays."""
        for server_round in range(self.first_round, self.settings.num_server_rounds + 1):
            arrays = self.run_round(server_round, arrays)
        return arrays
