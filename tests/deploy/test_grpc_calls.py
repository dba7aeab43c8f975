"""The relay's HTTP/2 call split: polls and heartbeats apart from calls that carry messages,
on byte streams made by a real HTTP/2 implementation (h2), split at arbitrary points."""

from __future__ import annotations

import struct

import pytest
from flwr.proto.fleet_pb2 import PullMessagesResponse
from flwr.proto.message_pb2 import Message as ProtoMessage
from h2.config import H2Configuration
from h2.connection import H2Connection

from fedsqueeze.deploy.wire.grpc_calls import DOWN, UP, ConnectionCalls


def grpc_body(message) -> bytes:
    data = message.SerializeToString()
    return b"\0" + struct.pack(">I", len(data)) + data


def conversation() -> tuple[list[tuple[str, bytes]], dict[int, str]]:
    """(direction, bytes) in order, and what each stream is."""
    client = H2Connection(H2Configuration(client_side=True))
    server = H2Connection(H2Configuration(client_side=False))
    client.initiate_connection()
    out: list[tuple[str, bytes]] = []

    def flush():
        up = client.data_to_send()
        if up:
            out.append((UP, up))
            server.receive_data(up)
        down = server.data_to_send()
        if down:
            out.append((DOWN, down))
            client.receive_data(down)

    flush()
    calls = {}
    full = PullMessagesResponse()
    full.messages_list.append(ProtoMessage())
    full.messages_list[0].metadata.message_id = "x" * 64
    plan = [("SendNodeHeartbeat", b"ping", b"ok"),
            ("PullMessages", b"req", grpc_body(PullMessagesResponse())),
            ("PullMessages", b"req", grpc_body(full)),
            ("PullObject", b"id", b"\0" + struct.pack(">I", 40_000) + b"o" * 40_000),
            ("PullMessages", b"req", grpc_body(PullMessagesResponse()))]
    for name, request, response in plan:
        stream = client.get_next_available_stream_id()
        client.send_headers(stream, [(":method", "POST"), (":scheme", "http"),
                                     (":path", f"/flwr.proto.Fleet/{name}"),
                                     (":authority", "127.0.0.1"),
                                     ("content-type", "application/grpc")])
        client.send_data(stream, request, end_stream=True)
        flush()
        server.send_headers(stream, [(":status", "200"), ("content-type", "application/grpc")])
        for start in range(0, len(response), 16_000):
            server.send_data(stream, response[start:start + 16_000])
        server.send_headers(stream, [("grpc-status", "0")], end_stream=True)
        flush()
        calls[stream] = name
    client.ping(b"12345678")
    flush()
    return out, calls


@pytest.mark.parametrize("piece", [1, 7, 1000, 1 << 20])
def test_every_byte_is_attributed_and_idle_polls_are_told_apart(piece):
    out, calls = conversation()
    parser = ConnectionCalls()
    per_stream: dict[int, int] = {}
    total = 0
    for direction, data in out:
        total += len(data)
        for start in range(0, len(data), piece):  # the relay may see any split
            for stream, n in parser.feed(direction, data[start:start + piece]):
                per_stream[stream] = per_stream.get(stream, 0) + n
    assert sum(per_stream.values()) == total and not parser.unparsed
    kinds = {calls.get(s, "stream 0"): parser.kind(s) for s in per_stream}
    streams = sorted(calls)
    assert [parser.kind(s) for s in streams] == ["poll", "poll", "message", "message", "poll"]
    assert parser.kind(0) == "connection" and kinds["stream 0"] == "connection"
    assert per_stream[streams[3]] > 40_000  # the object pull carries its bytes


def test_bytes_that_are_not_http2_are_unparsed_never_misattributed():
    parser = ConnectionCalls()
    tls_hello = b"\x16\x03\x01\x02\x00" + b"\x01" * 100
    assert parser.feed(UP, tls_hello) == [(-1, len(tls_hello))]
    assert parser.unparsed and parser.kind(-1) == "unparsed"
    assert parser.feed(DOWN, b"\x16\x03\x03") == [(-1, 3)]
