"""Put the wire layer into a deployment's results.

The ServerApp writes `rounds.jsonl` with `wire_*` = null (it cannot see TCP). Each row carries
its wall-clock window (`started_unix`, `ended_unix`); the relay in front of SuperNode i
(partition i) timestamps every chunk it forwards. Bytes inside a round's window are that
round's; bytes of the discovery exchange are `wire_setup_*`; everything else (SuperNodes
polling and sending heartbeats while the server is between rounds, start-up, shutdown) is
`wire_idle_*`. The relays' totals are `wire_all_*`.

Inside a round, polls are not traffic: `wire_up`/`wire_down` (the figure every table uses)
count the gRPC calls that carry messages (and the connection's own frames), `wire_poll_*` the
idle polls and heartbeats (deploy/wire/grpc_calls.py follows the cleartext HTTP/2 streams). Over
TLS the relay cannot see calls: there `wire_poll_*` is estimated from the node's idle rate
(bytes per second outside rounds) times the round's duration, and rows say
`wire_poll_estimated: true`.

Checks written into summary.json:
- `message_vs_flower`: our message-layer totals (all phases) against `flwr ls`'s
  `network-traffic` (Flower counts Fleet message protobufs and object contents);
- `wire_below_message`: any (round, client, direction) whose wire bytes are below its message
  bytes, which can only happen when the SuperLink's content-addressed object store already held
  an identical object and the SuperNode skipped the upload (deduplication).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import Counter
from pathlib import Path
from typing import Any

import flwr
from flwr.app import MessageType

from fedsqueeze.server.results import ROUND_KEYS, ResultsWriter, read_run, rewrite_run
from fedsqueeze.strategies.settings import import_plugins, names_in
from fedsqueeze.strategies.sinks import deliver, sinks_named

from .grpc_calls import CONNECTION, MESSAGE, POLL, UNPARSED
from .wire_meter import HTTP2_PREFACE, WireMeter, split_by_windows

DIRECTIONS = ("up", "down")


def protocol_seen(meter: WireMeter) -> str:
    """What the SuperNode spoke on its connections, read off their first bytes.

    gRPC runs over HTTP/2, whose client connection preface is fixed; a TLS connection starts
    with a handshake record (0x16 0x03 ..), inside which HTTP/2 is negotiated by ALPN.
    """
    firsts = [f for f in meter.first_bytes(len(HTTP2_PREFACE)) if f]  # skip silent connections
    if firsts and all(f == HTTP2_PREFACE for f in firsts):
        return "HTTP/2 (gRPC, cleartext)"
    if firsts and all(f[:2] == b"\x16\x03" for f in firsts):
        return "TLS"
    return "unknown: " + ", ".join(f[:8].hex() for f in firsts[:3])


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def _polls_by_window(meter: WireMeter, windows: list[tuple[float, float]], idle_rate: float
                     ) -> tuple[list[dict[str, int]], bool]:
    """Poll bytes per window and direction, and whether they are estimated (TLS)."""
    polls = [{d: 0 for d in DIRECTIONS} for _ in windows]
    unparsed = [{d: 0 for d in DIRECTIONS} for _ in windows]
    for t, d, n, kind in meter.kind_events():
        for i, (t0, t1) in enumerate(windows):
            if t0 <= t < t1:
                if kind == POLL:
                    polls[i][d] += n
                elif kind == UNPARSED:
                    unparsed[i][d] += n
                break
    estimated = any(u[d] for u in unparsed for d in DIRECTIONS)
    if estimated:  # over TLS: the node's idle rate (both directions) for the window's length
        for poll, gone, (t0, t1) in zip(polls, unparsed, windows):
            for d in DIRECTIONS:
                poll[d] += min(gone[d], int(idle_rate / 2 * (t1 - t0)))
    return polls, estimated


def _idle_rate(meter: WireMeter, windows: list[tuple[float, float]], idle_bytes: int) -> float:
    """Bytes per second (both directions) of a node outside rounds and set-up."""
    events = meter.events()
    if not events:
        return 0.0
    span = events[-1][0] - events[0][0] - sum(t1 - t0 for t0, t1 in windows)
    return idle_bytes / span if span > 0 else 0.0


def add_wire_bytes(run_dir: Path, meters: list[WireMeter], flower_status: dict,
                   since: float = 0.0) -> dict[str, Any]:
    """Fill `wire_*` per round, per client and in total; returns the summary's wire section.

    Only rounds that started after `since` (this launch's) are the meters'; a resumed run's
    earlier rounds keep what the launch that ran them wrote."""
    config, all_rounds, summary = read_run(run_dir)
    rounds = [r for r in all_rounds if r["started_unix"] >= since]
    windows = [(r["started_unix"], r["ended_unix"]) for r in rounds]
    discovery = config.get("discovery", {}).get("window_unix")
    setup = {d: 0 for d in DIRECTIONS}
    idle = {d: 0 for d in DIRECTIONS}
    every = {d: 0 for d in DIRECTIONS}
    for row in rounds:
        row["wire_up"] = row["wire_down"] = row["wire_poll_up"] = row["wire_poll_down"] = 0
        row["wire_poll_estimated"] = False
    for partition_id, meter in enumerate(meters):
        per_round, rest = split_by_windows(meter.events(), windows)
        in_setup = meter.bytes_between(*discovery) if discovery else {d: 0 for d in DIRECTIONS}
        node_idle = {d: rest[d] - in_setup[d] for d in DIRECTIONS}
        for d in DIRECTIONS:
            setup[d] += in_setup[d]
            idle[d] += node_idle[d]
            every[d] += getattr(meter, f"{d}_bytes")
        spans = windows + ([tuple(discovery)] if discovery else [])
        polls, estimated = _polls_by_window(
            meter, windows, _idle_rate(meter, spans, sum(node_idle.values())))
        for row, wire, poll in zip(rounds, per_round, polls):
            client = row["per_client"].setdefault(str(partition_id), {})
            row["wire_poll_estimated"] |= estimated
            for d in DIRECTIONS:
                row[f"wire_{d}"] += wire[d] - poll[d]
                row[f"wire_poll_{d}"] += poll[d]
                client[f"wire_{d}"] = wire[d] - poll[d]
                client[f"wire_poll_{d}"] = poll[d]

    below = [
        {"round": row["round"], "partition_id": int(pid), "direction": d,
         "message": client.get(f"message_{d}", 0), "wire": client[f"wire_{d}"]}
        for row in rounds for pid, client in row["per_client"].items() for d in DIRECTIONS
        if client.get(f"wire_{d}", 0) < client.get(f"message_{d}", 0)]

    message = {d: sum(r[f"message_{d}"] for r in rounds) + config.get("discovery", {}).get(
        f"message_{d}", 0) for d in DIRECTIONS}
    traffic = flower_status.get("network-traffic", {})
    section: dict[str, Any] = {
        **{f"wire_{d}": sum(r[f"wire_{d}"] for r in rounds) for d in DIRECTIONS},
        **{f"wire_poll_{d}": sum(r[f"wire_poll_{d}"] for r in rounds) for d in DIRECTIONS},
        "wire_poll_estimated": any(r["wire_poll_estimated"] for r in rounds),
        **{f"wire_setup_{d}": setup[d] for d in DIRECTIONS},
        **{f"wire_idle_{d}": idle[d] for d in DIRECTIONS},
        **{f"wire_all_{d}": every[d] for d in DIRECTIONS},
        "message_vs_flower": {
            "message_up_all_phases": message["up"],
            "message_down_all_phases": message["down"],
            "flower_inbound_bytes": traffic.get("inbound-bytes"),
            "flower_outbound_bytes": traffic.get("outbound-bytes"),
            "up_ratio": _ratio(message["up"], traffic.get("inbound-bytes") or 0),
            "down_ratio": _ratio(message["down"], traffic.get("outbound-bytes") or 0),
        },
        # the rounds' message-carrying wire bytes against Flower's count of the rounds'
        # messages (its total less the discovery exchange, which our message layer measured)
        "wire_vs_flower": {
            f"{d}_ratio": _ratio(sum(r[f"wire_{d}"] for r in rounds),
                                 max(0, (traffic.get(key) or 0)
                                     - config.get("discovery", {}).get(f"message_{d}", 0)))
            for d, key in (("up", "inbound-bytes"), ("down", "outbound-bytes"))},
        "wire_below_message": below,
        "protocol": {str(i): protocol_seen(m) for i, m in enumerate(meters)},
        "wire_calls": calls_by_path(meters),
    }
    summary.update(section)
    for key in ("wire_up", "wire_down", "wire_poll_up", "wire_poll_down"):  # the whole run's
        values = [r.get(key) for r in all_rounds]
        summary[key] = None if any(v is None for v in values) else sum(values)
    rewrite_run(run_dir, all_rounds, summary)
    wire_to_sinks(config.get("run_config", {}), run_dir, rounds)
    return section


def wire_to_sinks(run_config: dict[str, Any], run_dir: Path, rounds: list[dict[str, Any]]
                  ) -> None:
    """The wire bytes of these rounds to the run's results sinks (the ServerApp gave them
    everything else; only the launcher sees the wire)."""
    names = names_in(str(run_config.get("sinks", "")))
    if not names:
        return
    import_plugins(str(run_config.get("plugins", "")))  # a plugin's sinks
    sinks = sinks_named(names, run_dir)
    for row in rounds:
        deliver(sinks, {key: row[key] for key in ("round", "wire_up", "wire_down")})
    for sink in sinks:
        sink.close()


CALL_KINDS = (MESSAGE, POLL, CONNECTION, UNPARSED)


def wire_by_node(meters: list[WireMeter], flower_status: dict) -> dict[str, Any]:
    """Any app's wire bytes (no rounds needed): per SuperNode (by partition id) and direction,
    the bytes of the gRPC calls that carry messages, of polls and heartbeats, of connection
    frames and of what could not be parsed; their totals; Flower's own count beside them."""
    nodes: dict[str, dict[str, int]] = {}
    for partition_id, meter in enumerate(meters):
        bytes_of = {f"{kind}_{d}": 0 for kind in CALL_KINDS for d in DIRECTIONS}
        for _, direction, nbytes, kind in meter.kind_events():
            bytes_of[f"{kind}_{direction}"] += nbytes
        nodes[str(partition_id)] = bytes_of
    keys = [f"{kind}_{d}" for kind in CALL_KINDS for d in DIRECTIONS]
    traffic = flower_status.get("network-traffic", {})
    return {"nodes": nodes, "total": {k: sum(n[k] for n in nodes.values()) for k in keys},
            "flower_inbound_bytes": traffic.get("inbound-bytes"),
            "flower_outbound_bytes": traffic.get("outbound-bytes"),
            "protocol": {str(i): protocol_seen(m) for i, m in enumerate(meters)},
            "calls": calls_by_path(meters)}


def calls_by_path(meters: list[WireMeter]) -> dict[str, dict[str, int]]:
    """Every SuperNode's gRPC calls by method, whole run: how many, and their bytes by
    direction and HTTP/2 frame type (what framing costs per kind of call)."""
    total: dict[str, Counter[str]] = {}
    for meter in meters:
        for path, counts in meter.calls_by_path().items():
            total.setdefault(path.rsplit("/", 1)[-1], Counter()).update(counts)
    return {path: dict(sorted(counts.items())) for path, counts in sorted(total.items())}


def _round_in_group(group_id: str) -> str | None:
    """The round a group id names (`"3"`, fedsqueeze's `"3:train"`), else None."""
    head = group_id.split(":", 1)[0]
    return head if head.isdigit() else None


def round_starts(meters: list[WireMeter]) -> list[float]:
    """When each round's train messages were created, under Flower's `Strategy.start`: train
    messages created with no reply pushed in between are one round's (a round creates all
    its train messages before it sends any; the next round's come after its replies), and so
    are those whose group ids name the same round (a method's exchanges before `train`, such
    as GWPF's signals: `"3:signals"`, then `"3:train"`)."""
    trains = sorted({(p.created_at, _round_in_group(p.group_id)) for m in meters
                     for p in m.pulled() if p.message_type == MessageType.TRAIN})
    pushes = sorted(t for m in meters for t in m.push_times())
    starts: list[float] = []
    for previous, (created, named) in zip([None, *trains], trains):
        replied = previous is not None and \
            bisect_left(pushes, created) > bisect_right(pushes, previous[0])
        if previous is None or replied and (named is None or named != previous[1]):
            starts.append(created)
    return starts


def rounds_of_any_app(meters: list[WireMeter], logged: list[dict[str, Any]]
                      ) -> list[dict[str, Any]]:
    """Rows in the results schema for an app that is not fedsqueeze's, one per round
    (`round_starts`; each message is the round's that started last before it was created;
    needs cleartext gRPC: over TLS there are no rows).

    `wire_*`: the bytes of the gRPC calls that served the round's messages, in total and per
    SuperNode (`per_client`, by partition id; polls and connection frames are per SuperNode in
    `wire.json`). `payload_*` and `message_*`: what a `Compressed` in the app logged
    (`logged`, its rows: the round's train messages), else None; its federated evaluation's
    `accuracy` and `loss` when it reports them."""
    partition_of = {p.dst_node_id: str(pid) for pid, m in enumerate(meters) for p in m.pulled()}
    starts = round_starts(meters)
    rows: dict[int, dict[str, Any]] = {}
    for pid, meter in enumerate(meters):
        for t, direction, nbytes, served in meter.message_events():
            # the last round started when the message was created (0: before any)
            number = 0 if served is None else bisect_right(starts, served.created_at)
            if number == 0:  # calls before the first train message
                continue
            row = rows.get(number)
            if row is None:
                row = rows[number] = {key: None for key in ROUND_KEYS}
                row.update(round=number, wire_up=0, wire_down=0, per_client={},
                           started_unix=t, ended_unix=t)
            row[f"wire_{direction}"] += nbytes
            row["started_unix"] = min(row["started_unix"], t)
            row["ended_unix"] = max(row["ended_unix"], t)
            client = row["per_client"].setdefault(str(pid), {"wire_up": 0, "wire_down": 0})
            client[f"wire_{direction}"] += nbytes
    for row in rows.values():
        row["seconds"] = row["ended_unix"] - row["started_unix"]
    for entry in logged:
        row = rows.get(entry.get("round"))
        if row is None:
            continue
        for key in ("payload_up", "payload_down", "message_up", "message_down"):
            if key in entry:
                row[key] = entry[key]
        for node, values in entry.get("per_client", {}).items():
            row["per_client"].setdefault(partition_of.get(int(node), f"node {node}"),
                                         {}).update(values)
        evaluated = entry.get("evaluate") or {}
        for key in ("accuracy", "loss"):
            if isinstance(evaluated.get(key), (int, float)):
                row[key] = float(evaluated[key])
        if evaluated:
            row["evaluate"] = evaluated
    return [rows[number] for number in sorted(rows)]


def write_any_app_results(run_dir: Path, app_dir: Path, run_config: dict[str, Any],
                          meters: list[WireMeter], logged: list[dict[str, Any]],
                          flower_status: dict[str, Any], failure: BaseException | None
                          ) -> list[dict[str, Any]]:
    """config.json, rounds.jsonl and summary.json (the results schema) of a deployment of an
    app that is not fedsqueeze's: `rounds_of_any_app`, and how the run ended (Flower's
    status; `interrupted` when the launcher was stopped). Returns the rows."""
    writer = ResultsWriter(run_dir, {
        "app": str(app_dir), "run_config": dict(run_config), "engine": "deployment",
        "transport": "grpc-rere (Fleet API)", "flwr_version": flwr.__version__})
    rows = rounds_of_any_app(meters, logged)
    for row in rows:
        writer.write_round(row)
    said = str(flower_status.get("status", "unknown"))
    if isinstance(failure, KeyboardInterrupt):
        status, error = "interrupted", "the launcher was stopped (Ctrl-C or SIGTERM)"
    elif said == "finished:completed":
        status, error = "completed", None
    else:
        status = "failed"
        error = f"Flower says {said} {flower_status.get('status-details', '')}".rstrip()
        if failure is not None:
            error += f"; the launch failed: {failure}"
    writer.finish(status, sum(r["seconds"] for r in rows), error)
    return rows
