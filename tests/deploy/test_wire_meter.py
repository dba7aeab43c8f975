"""The wire meter forwards every byte between a client and its target and counts each once."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time

import pytest

from fedsqueeze.deploy.wire.wire_meter import (
    HTTP2_PREFACE,
    EventTimeline,
    WireMeter,
    bytes_between,
    split_by_windows,
)

TIMEOUT = 10.0


# ------------------------------------------------------------------ a tiny target server
class Server:
    """127.0.0.1:port; each connection runs ``handler(conn, record)`` in its own thread."""

    def __init__(self, handler, sock: socket.socket | None = None):
        self.handler = handler
        self.sock = sock or socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if sock is None:
            self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.records: list[dict] = []
        self.threads: list[threading.Thread] = []
        self._accepter: threading.Thread | None = None

    def start(self) -> Server:
        self.sock.listen(64)
        self._accepter = threading.Thread(target=self._accept, daemon=True)
        self._accepter.start()
        return self

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.settimeout(TIMEOUT)
            record: dict = {}
            self.records.append(record)
            t = threading.Thread(target=self._serve, args=(conn, record), daemon=True)
            self.threads.append(t)
            t.start()

    def _serve(self, conn, record):
        try:
            self.handler(conn, record)
        except OSError as exc:
            record["error"] = exc
        finally:
            conn.close()

    def join_handlers(self):
        for t in list(self.threads):
            t.join(TIMEOUT)

    def stop(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        if self._accepter is not None:
            self._accepter.join(TIMEOUT)
        self.join_handlers()


def read_all(sock) -> bytes:
    chunks = []
    while data := sock.recv(1 << 16):
        chunks.append(data)
    return b"".join(chunks)


def send_and_close(sock, data):
    """Send everything, then half-close (the reading side stays open)."""
    sock.sendall(data)
    sock.shutdown(socket.SHUT_WR)


def echo(conn, record):
    n = 0
    while data := conn.recv(1 << 16):
        conn.sendall(data)
        n += len(data)
    record["received"] = n


def reply_after_eof(size):
    """Read everything, then (after the client's FIN arrived) send ``size`` bytes and close."""
    def handler(conn, record):
        record["received"] = len(read_all(conn))
        record["saw_eof"] = True
        conn.sendall(b"r" * size)
    return handler


def connect(port) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)


@pytest.fixture
def serve():
    servers = []

    def start(handler, sock=None):
        server = Server(handler, sock).start()
        servers.append(server)
        return server
    yield start
    for s in servers:
        s.stop()


@pytest.fixture
def meter_to():
    meters = []

    def start(port, name="test"):
        meter = WireMeter(("127.0.0.1", port), name=name)
        meter.start()
        meters.append(meter)
        return meter
    yield start
    for m in meters:
        m.stop()


def wait_for(predicate, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.005)


# ------------------------------------------------------------------ exact counts
def test_counts_exactly_the_bytes_the_client_sent_up_and_received_down(serve, meter_to):
    server = serve(reply_after_eof(7_777))
    meter = meter_to(server.port)
    with connect(meter.port) as c:
        for size in (1, 100, 65_536, 3):
            c.sendall(b"u" * size)
        c.shutdown(socket.SHUT_WR)
        got = read_all(c)
    server.join_handlers()
    wait_for(lambda: meter.active_connections == 0)
    assert server.records[0]["received"] == 65_640
    assert len(got) == 7_777
    assert (meter.up_bytes, meter.down_bytes) == (65_640, 7_777)
    assert meter.connections == 1


def test_many_concurrent_connections_are_each_forwarded_and_counted_once(serve, meter_to):
    server = serve(echo)
    meter = meter_to(server.port)
    sizes = [i * 3_001 + 7 for i in range(32)]
    received = {}

    def client(i, size):
        payload = bytes([i]) * size
        with connect(meter.port) as c:
            sender = threading.Thread(target=send_and_close, args=(c, payload))
            sender.start()
            received[i] = read_all(c) == payload
            sender.join()

    threads = [threading.Thread(target=client, args=(i, s)) for i, s in enumerate(sizes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    wait_for(lambda: meter.active_connections == 0)
    assert received == {i: True for i in range(len(sizes))}
    assert meter.up_bytes == meter.down_bytes == sum(sizes)
    assert meter.connections == len(sizes)


def test_large_transfers_in_both_directions_at_once_arrive_intact_and_counted(serve, meter_to):
    up_data = os.urandom(50 * 2**20)  # content only has to arrive intact (checked by hash)
    down_data = os.urandom(30 * 2**20)

    def exchange(conn, record):
        sender = threading.Thread(target=send_and_close, args=(conn, down_data))
        sender.start()
        record["digest"] = hashlib.sha256(read_all(conn)).digest()
        sender.join()

    server = serve(exchange)
    meter = meter_to(server.port)
    start = time.monotonic()
    with connect(meter.port) as c:
        sender = threading.Thread(target=send_and_close, args=(c, up_data))
        sender.start()
        got = read_all(c)
        sender.join()
    server.join_handlers()
    elapsed = time.monotonic() - start
    assert hashlib.sha256(got).digest() == hashlib.sha256(down_data).digest()
    assert server.records[0]["digest"] == hashlib.sha256(up_data).digest()
    wait_for(lambda: meter.active_connections == 0)
    assert (meter.up_bytes, meter.down_bytes) == (len(up_data), len(down_data))
    assert elapsed < 10, f"80 MB through the relay took {elapsed:.1f} s"


def test_counters_can_be_read_from_another_thread_while_traffic_flows(serve, meter_to):
    server = serve(echo)
    meter = meter_to(server.port)
    seen = []
    done = threading.Event()

    def watch():
        while not done.is_set():
            seen.append((meter.up_bytes, meter.down_bytes, len(meter.events())))
    watcher = threading.Thread(target=watch)
    watcher.start()
    with connect(meter.port) as c:
        for _ in range(50):
            c.sendall(b"x" * 20_000)
            assert len(c.recv(20_000, socket.MSG_WAITALL)) == 20_000
    done.set()
    watcher.join()
    wait_for(lambda: meter.active_connections == 0)
    assert seen == sorted(seen)  # every counter only ever grows
    assert meter.up_bytes == meter.down_bytes == 1_000_000


# ------------------------------------------------------------------ half-close, reset, target down
def test_half_close_reaches_the_target_and_its_reply_still_comes_back(serve, meter_to):
    server = serve(reply_after_eof(12))
    meter = meter_to(server.port)
    with connect(meter.port) as c:
        c.sendall(b"request")
        c.shutdown(socket.SHUT_WR)  # the server replies only once it has seen this FIN
        assert read_all(c) == b"r" * 12
    server.join_handlers()
    assert server.records[0] == {"received": 7, "saw_eof": True}
    wait_for(lambda: meter.active_connections == 0)
    assert (meter.up_bytes, meter.down_bytes) == (7, 12)


def test_target_half_close_reaches_the_client_while_upload_continues(serve, meter_to):
    def greet_then_read(conn, record):
        conn.sendall(b"hello")
        conn.shutdown(socket.SHUT_WR)
        record["received"] = len(read_all(conn))

    server = serve(greet_then_read)
    meter = meter_to(server.port)
    with connect(meter.port) as c:
        assert read_all(c) == b"hello"  # EOF from the target arrived
        c.sendall(b"z" * 100_000)       # ... yet the client can still send
        c.shutdown(socket.SHUT_WR)
        server.join_handlers()
    assert server.records[0]["received"] == 100_000
    wait_for(lambda: meter.active_connections == 0)
    assert (meter.up_bytes, meter.down_bytes) == (100_000, 5)


def test_a_client_reset_closes_the_target_leg_and_the_relay_keeps_serving(serve, meter_to):
    server = serve(echo)
    meter = meter_to(server.port)
    c = connect(meter.port)
    c.sendall(b"abc")
    assert c.recv(3, socket.MSG_WAITALL) == b"abc"
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    c.close()  # RST
    server.join_handlers()
    assert not server.threads[0].is_alive()  # the target side saw the connection end
    wait_for(lambda: meter.active_connections == 0)
    with connect(meter.port) as c2:
        c2.sendall(b"again")
        assert c2.recv(5, socket.MSG_WAITALL) == b"again"
    wait_for(lambda: meter.active_connections == 0)
    assert meter.up_bytes == meter.down_bytes == 8


def test_target_down_closes_the_client_counts_nothing_and_the_relay_keeps_running(serve, meter_to):
    not_listening = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    not_listening.bind(("127.0.0.1", 0))  # bound but not listening: connections are refused
    meter = meter_to(not_listening.getsockname()[1])
    with connect(meter.port) as c:
        c.sendall(b"anyone there?")
        try:
            assert c.recv(100) == b""
        except ConnectionResetError:
            pass
    wait_for(lambda: meter.active_connections == 0)
    assert (meter.up_bytes, meter.down_bytes, meter.connections, meter.refused) == (0, 0, 1, 1)

    serve(echo, sock=not_listening)  # the target comes up on the same port
    with connect(meter.port) as c:
        c.sendall(b"now")
        assert c.recv(3, socket.MSG_WAITALL) == b"now"
    wait_for(lambda: meter.active_connections == 0)
    assert (meter.up_bytes, meter.down_bytes, meter.connections, meter.refused) == (3, 3, 2, 1)


# ------------------------------------------------------------------ first bytes
def test_first_bytes_keeps_the_start_of_what_each_client_sent_in_accept_order(serve, meter_to):
    server = serve(echo)
    meter = meter_to(server.port)
    for i in range(3):
        with connect(meter.port) as c:
            message = f"connection-{i}:".encode() + b"." * 100
            for k in range(0, len(message), 5):  # tiny pieces are joined
                c.sendall(message[k:k + 5])
            c.recv(len(message), socket.MSG_WAITALL)
    wait_for(lambda: meter.active_connections == 0)
    assert meter.first_bytes() == [f"connection-{i}:".encode() + b"." * 11 for i in range(3)]
    assert meter.first_bytes(4) == [b"conn"] * 3
    with pytest.raises(ValueError):
        meter.first_bytes(65)


def test_a_grpc_client_opens_its_connection_with_the_http2_preface(meter_to):
    grpc = pytest.importorskip("grpc")
    from concurrent.futures import ThreadPoolExecutor

    server = grpc.server(ThreadPoolExecutor(max_workers=1))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        meter = meter_to(port)
        channel = grpc.insecure_channel(f"127.0.0.1:{meter.port}",
                                        options=[("grpc.enable_http_proxy", 0)])
        grpc.channel_ready_future(channel).result(timeout=TIMEOUT)
        channel.close()
    finally:
        server.stop(None)
    wait_for(lambda: meter.active_connections == 0)
    assert meter.first_bytes()[0] == HTTP2_PREFACE
    assert meter.up_bytes > len(HTTP2_PREFACE) and meter.down_bytes > 0  # SETTINGS frames


# ------------------------------------------------------------------ timeline
def test_timeline_merges_chunks_of_one_direction_within_the_resolution():
    tl = EventTimeline(resolution=0.01)
    for t, d, n in [(100.000, "up", 5), (100.004, "down", 7), (100.009, "up", 5),
                    (100.010, "up", 1), (100.012, "down", 1), (100.5, "down", 2)]:
        tl.add(t, d, n)
    tl.add(100.6, "up", 0)  # empty chunks leave no trace
    assert tl.snapshot() == [(100.000, "up", 10), (100.004, "down", 8),
                             (100.010, "up", 1), (100.5, "down", 2)]


def test_bytes_between_counts_events_in_the_half_open_interval():
    events = [(1.0, "up", 10), (2.0, "down", 20), (3.0, "up", 30), (3.0, "down", 1)]
    assert bytes_between(events, 1.0, 3.0) == {"up": 10, "down": 20}
    assert bytes_between(events, 3.0, 3.5) == {"up": 30, "down": 1}
    assert bytes_between(events, 4.0, 5.0) == {"up": 0, "down": 0}


def test_split_by_windows_gives_bytes_per_window_and_the_idle_remainder():
    events = [(0.5, "up", 1), (1.0, "up", 100), (1.5, "down", 200), (2.0, "up", 2),
              (3.0, "down", 300), (3.9, "up", 30), (4.0, "down", 4), (9.0, "up", 9)]
    windows = [(1.0, 2.0), (3.0, 4.0), (3.5, 5.0)]  # the last overlaps the second
    per_window, rest = split_by_windows(events, windows)
    assert per_window == [{"up": 100, "down": 200}, {"up": 30, "down": 300},
                          {"up": 0, "down": 4}]
    assert rest == {"up": 1 + 2 + 9, "down": 0}
    assert split_by_windows(events, []) == ([], {"up": 142, "down": 504})


def test_the_timeline_of_real_traffic_adds_up_to_the_counters(serve, meter_to):
    server = serve(echo)
    meter = meter_to(server.port)
    t0 = time.time()
    with connect(meter.port) as c:
        for _ in range(20):
            c.sendall(b"p" * 3_000)
            c.recv(3_000, socket.MSG_WAITALL)
    wait_for(lambda: meter.active_connections == 0)
    t1 = time.time() + 1e-3
    events = meter.events()
    assert [e[0] for e in events] == sorted(e[0] for e in events)
    assert all(t0 <= t < t1 for t, _, _ in events)
    assert meter.bytes_between(t0, t1) == {"up": 60_000, "down": 60_000}
    assert meter.bytes_between(t1, t1 + 10) == {"up": 0, "down": 0}


# ------------------------------------------------------------------ lifecycle
def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_stop_closes_every_socket_ends_the_thread_frees_the_port_and_is_idempotent(serve):
    server = serve(echo)
    threads_before, fds_before = threading.active_count(), _open_fds()
    meter = WireMeter(("127.0.0.1", server.port), name="lifecycle")
    port = meter.start()
    assert port == meter.port > 0
    assert threading.active_count() == threads_before + 1
    idle = connect(port)  # a connection still open when stop() comes
    idle.sendall(b"hi")
    assert idle.recv(2, socket.MSG_WAITALL) == b"hi"

    meter.stop()
    assert idle.recv(10) == b""  # the relay closed its side
    idle.close()
    server.join_handlers()
    meter.stop()  # a second stop is harmless
    assert threading.active_count() == threads_before
    assert _open_fds() == fds_before
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    probe.bind(("127.0.0.1", port))  # fails while anything still listens there
    probe.listen(1)
    probe.close()
    assert (meter.up_bytes, meter.down_bytes) == (2, 2)  # readings survive stop()
    with pytest.raises(RuntimeError):
        meter.start()


def test_stop_before_start_does_nothing_and_the_context_manager_stops():
    WireMeter(("127.0.0.1", 9)).stop()
    threads_before = threading.active_count()
    with WireMeter(("127.0.0.1", 9)) as meter:
        assert meter.port > 0
    assert threading.active_count() == threads_before


@pytest.mark.parametrize("target, listen_host, error", [
    (("10.0.0.1", 9092), "127.0.0.1", "loopback"),
    (("example.com", 9092), "127.0.0.1", "loopback"),
    (("::1", 9092), "127.0.0.1", "loopback"),
    (("127.0.0.1", 9092), "example.com", "IPv4"),
    (("127.0.0.1", 9092), "::", "IPv4"),
])
def test_target_on_loopback_listener_on_an_ipv4_address(target, listen_host, error):
    with pytest.raises(ValueError, match=error):
        WireMeter(target, listen_host=listen_host)


def test_listens_on_any_address_and_a_given_port(serve):
    server = serve(echo)
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    with WireMeter(("127.0.0.1", server.port), listen_host="0.0.0.0", listen_port=port) as m:
        assert m.port == port
        with connect(port) as conn:
            send_and_close(conn, b"hello")
            assert read_all(conn) == b"hello"
