"""Which gRPC call each byte of a cleartext Fleet connection belongs to.

A SuperNode's connection to the SuperLink is one HTTP/2 connection carrying many gRPC calls
(streams). Fast polling costs bytes of its own (about 10 KB/s per node at a 0.05 s poll),
which would swamp the few KB per round of a compressed method, so the relay follows the
HTTP/2 frames (hyperframe) of both directions, decodes the client's header blocks (hpack) to
learn each stream's `:path`, and classifies every stream when it ends:

* `poll`: `SendNodeHeartbeat`, and `PullMessages` calls whose response carried no message
  (the idle polls);
* `message`: every other call (PullMessages that delivered a message, PullObject,
  PushMessages, PushObject, ConfirmMessageReceived, GetRun, GetFab, ...);
* `connection`: the client preface and frames of stream 0 (SETTINGS, PING, WINDOW_UPDATE,
  GOAWAY), which serve whatever the connection carries; counted with `message`.

Each `message` stream also gets the message the SuperNode last pulled (`Pulled`: its type,
creation time and group id), and PushMessages calls (replies) are marked, so any app's wire
bytes split by round (deploy/wire/wire_results.py); the node id the pulled messages were addressed
to names the SuperNode.

The parser sees bytes exactly as the relay delivers them; a frame's bytes are attributed when
the frame is complete. Anything it cannot parse (TLS, a protocol error) turns the connection
into `unparsed` from there on, never into a wrong split.
"""

from __future__ import annotations

import struct
from collections import Counter, defaultdict
from typing import NamedTuple

from google.protobuf.message import DecodeError
from hpack import Decoder
from hpack.exceptions import HPACKError
from hyperframe.exceptions import HyperframeError
from hyperframe.frame import ContinuationFrame, DataFrame, Frame, HeadersFrame

UP, DOWN = "up", "down"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FRAME_HEADER = 9
FLEET = "/flwr.proto.Fleet/"
HEARTBEAT = FLEET + "SendNodeHeartbeat"
PULL_MESSAGES = FLEET + "PullMessages"
PUSH_MESSAGES = FLEET + "PushMessages"
POLL, MESSAGE, CONNECTION, UNPARSED = "poll", "message", "connection", "unparsed"
MAX_PULL_RESPONSE = 1 << 20  # keep at most this much of a PullMessages response to decode


class Pulled(NamedTuple):
    """What the relay learns of a message a SuperNode pulled (its metadata)."""
    message_type: str
    created_at: float  # by the ServerApp's clock (time.time())
    group_id: str
    dst_node_id: int


def pulled_messages(body: bytes) -> list[Pulled]:
    """The messages a PullMessages response (gRPC length-prefixed protobufs) delivered; none:
    an idle poll."""
    from flwr.proto.fleet_pb2 import PullMessagesResponse

    offset, messages = 0, []
    while offset + 5 <= len(body):
        length = struct.unpack_from(">I", body, offset + 1)[0]
        response = PullMessagesResponse()
        response.ParseFromString(bytes(body[offset + 5:offset + 5 + length]))
        messages += [Pulled(m.metadata.message_type, m.metadata.created_at,
                            m.metadata.group_id, m.metadata.dst_node_id)
                     for m in response.messages_list]
        offset += 5 + length
    return messages


class ConnectionCalls:
    """The HTTP/2 frames of one connection, both directions, as the relay forwards them."""

    def __init__(self) -> None:
        self._buffer = {UP: bytearray(), DOWN: bytearray()}
        self._preface = len(PREFACE)
        self._decoder = Decoder()           # the client's header blocks (its HPACK state)
        self._block: tuple[int, bytearray] | None = None   # a header block being continued
        self._pull_body: dict[int, bytearray] = {}
        self._kinds: dict[int, str] = {}
        self._served: dict[int, Pulled] = {}  # message streams: the message they served
        self.pulled: list[Pulled] = []        # every message the SuperNode pulled
        self.pushes: set[int] = set()         # streams of PushMessages calls (replies)
        # per stream: its path and its bytes by (direction, frame type): what a call costs
        self.call_paths: dict[int, str] = {}
        self.call_bytes: dict[int, Counter[tuple[str, str]]] = defaultdict(Counter)
        self.unparsed = False
        self.reason = ""                     # why the connection became unparsed

    def kind(self, stream: int) -> str:
        """`poll`, `message`, `connection` or `unparsed` for a stream's bytes (streams still
        open count as `message`)."""
        if stream < 0:
            return UNPARSED
        if stream == 0:
            return CONNECTION
        return self._kinds.get(stream, MESSAGE)

    def served_by(self, stream: int) -> Pulled | None:
        """The message a finished message stream served (the last one pulled before it
        ended), else None."""
        return self._served.get(stream)

    def feed(self, direction: str, data: bytes) -> list[tuple[int, int]]:
        """Bytes delivered in `direction`; returns (stream id, bytes) of the frames they
        completed (stream 0: connection frames and the preface; -1: unparsed)."""
        if self.unparsed:
            return [(-1, len(data))]
        out: list[tuple[int, int]] = []
        if direction == UP and self._preface:
            take = min(self._preface, len(data))
            if data[:take] != PREFACE[len(PREFACE) - self._preface:][:take]:
                return self._give_up(direction, data, "no HTTP/2 client preface")
            self._preface -= take
            out.append((0, take))
            data = data[take:]
        buffer = self._buffer[direction]
        buffer += data
        try:
            while len(buffer) >= FRAME_HEADER:
                frame, length = Frame.parse_frame_header(memoryview(buffer)[:FRAME_HEADER])
                if len(buffer) < FRAME_HEADER + length:
                    break
                frame.parse_body(memoryview(bytes(buffer[FRAME_HEADER:FRAME_HEADER + length])))
                del buffer[:FRAME_HEADER + length]
                if frame.stream_id:
                    self.call_bytes[frame.stream_id][direction, type(frame).__name__] += \
                        FRAME_HEADER + length
                self._frame(direction, frame)
                out.append((frame.stream_id, FRAME_HEADER + length))
        except (HyperframeError, HPACKError, DecodeError, ValueError, struct.error) as err:
            return out + self._give_up(direction, b"", f"{type(err).__name__}: {err}")
        return out

    def _give_up(self, direction: str, data: bytes, reason: str) -> list[tuple[int, int]]:
        self.unparsed, self.reason = True, reason
        pending = sum(len(b) for b in self._buffer.values()) + len(data)
        self._buffer = {UP: bytearray(), DOWN: bytearray()}
        return [(-1, pending)] if pending else []

    def _frame(self, direction: str, frame: Frame) -> None:
        stream = frame.stream_id
        if direction == UP and isinstance(frame, (HeadersFrame, ContinuationFrame)):
            block = self._block[1] if self._block else bytearray()
            block += frame.data
            self._block = (stream, block)
            if "END_HEADERS" in frame.flags:
                # raw: gRPC metadata may carry binary (`-bin`) values
                headers = self._decoder.decode(bytes(block), raw=True)
                self._block = None
                raw_path = dict(headers).get(b":path")
                if raw_path is not None:
                    path = raw_path.decode("ascii", "replace")
                    self.call_paths[stream] = path
                    if path == PULL_MESSAGES:
                        self._pull_body[stream] = bytearray()
                    elif path == PUSH_MESSAGES:
                        self.pushes.add(stream)
        if direction == DOWN and isinstance(frame, DataFrame) and stream in self._pull_body:
            body = self._pull_body[stream]
            if len(body) < MAX_PULL_RESPONSE:
                body += frame.data
        if direction == DOWN and "END_STREAM" in frame.flags and stream in self.call_paths \
                and stream not in self._kinds:
            self._close(stream)

    def _close(self, stream: int) -> None:
        path = self.call_paths[stream]
        body = self._pull_body.pop(stream, None)
        pulled = pulled_messages(body) if body is not None else []
        self.pulled += pulled
        if path == HEARTBEAT or (body is not None and not pulled):
            self._kinds[stream] = POLL
        else:
            self._kinds[stream] = MESSAGE
            if self.pulled:
                self._served[stream] = self.pulled[-1]
