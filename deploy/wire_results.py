"""Put the wire layer into a deployment's results.

The ServerApp writes `rounds.jsonl` with `wire_*` = null (it cannot see TCP). Each row carries
its wall-clock window (`started_unix`, `ended_unix`); the relay in front of SuperNode i
(partition i) timestamps every chunk it forwards. Bytes inside a round's window are that
round's; bytes of the discovery exchange are `wire_setup_*`; everything else (SuperNodes
polling and sending heartbeats while the server is between rounds, start-up, shutdown) is
`wire_idle_*`. The relays' totals are `wire_all_*`.

Inside a round, polls are not traffic: `wire_up`/`wire_down` (the figure every table uses)
count the gRPC calls that carry messages (and the connection's own frames), `wire_poll_*` the
idle polls and heartbeats (deploy/grpc_calls.py follows the cleartext HTTP/2 streams). Over
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

from pathlib import Path
from typing import Any

from fedsqueeze.server.results import read_run, rewrite_run

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
    }
    summary.update(section)
    for key in ("wire_up", "wire_down", "wire_poll_up", "wire_poll_down"):  # the whole run's
        values = [r.get(key) for r in all_rounds]
        summary[key] = None if any(v is None for v in values) else sum(values)
    rewrite_run(run_dir, all_rounds, summary)
    return section


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
            "protocol": {str(i): protocol_seen(m) for i, m in enumerate(meters)}}
