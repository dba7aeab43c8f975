"""The one module that touches Flower's internals reports anything missing, never ignores it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from fedsqueeze.deploy.accelerated import flower_internals as fi


def test_the_installed_flower_has_every_internal_we_use():
    code = ("import time; from fedsqueeze.deploy.accelerated.flower_internals import *; "
            "assert apply_waits(Waits(idle_poll=0.01, reply_wait=0.01), supernode=True); "
            "import flwr.supernode.start_client_internal as m; "
            "import flwr.supercore.inflatable.inflatable_utils as u; "
            "t = time.monotonic(); m.time.sleep(3); m.time.sleep(0.5); "
            "assert time.monotonic() - t < 0.5, 'the stock waits are still there'; "
            "assert u.pull_objects.__kwdefaults__['initial_backoff'] == Waits().pull_backoff; "
            "import flwr.client.grpc_rere_client.connection as c, flwr.supercore.heartbeat as h; "
            "assert c.HEARTBEAT_DEFAULT_INTERVAL == h.HEARTBEAT_DEFAULT_INTERVAL == 10; "
            "assert c.generate_key_pairs()[0].curve.name == 'secp256r1'; "
            "assert callable(clientapp_entry()); patch_superlink_rings(); "
            "from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState; "
            "assert InMemoryLinkState.store_message_and_object_tree.fedsqueeze_hook; "
            "import flwr.superlink.main as sl; stock = sl._get_middleware(); "
            "patch_superlink_control_middleware(); ours = sl._get_middleware(); "
            "pairs = [(a.kwargs.get('control') or a.kwargs.get('stock', a), b) "
            "         for a, b in zip(ours, stock)]; "
            "assert len(ours) == len(stock); "
            "assert all(getattr(a, 'cls', a) is b.cls for a, b in pairs); "
            "assert sum(a.cls is ControlOnly for a in ours) == 4; "
            "assert sum(a.cls is RuntimeUnary for a in ours) == 2; "
            "import flwr.supernode.main as sn; "
            "assert sum(m.cls is RuntimeUnary for m in sn.create_app().user_middleware) == 2; "
            "import flwr.supercore.telemetry as tm; assert skip_disabled_telemetry(); "
            "assert tm.create_event(tm.EventType.FLWR_CLIENTAPP_RUN_ENTER, {}) == 'disabled'; "
            "print('ok')")
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_TELEMETRY_LOGGING": "0"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env=env)
    assert done.stdout.strip() == "ok", done.stderr


def test_a_missing_attribute_is_reported_by_name(monkeypatch):
    empty = types.ModuleType(fi.SUPERNODE_LOOP)
    monkeypatch.setattr(fi, "_module", lambda name: empty)
    with pytest.raises(fi.FlowerInternalsError, match="no attribute 'pull_objects'"):
        fi.patch_pull_backoff(fi.Waits())
    with pytest.raises(fi.FlowerInternalsError, match="run_clientapp"):
        fi.clientapp_entry()
    with pytest.raises(fi.FlowerInternalsError, match="HEARTBEAT_MIN_INTERVAL"):
        fi.patch_heartbeat(fi.Waits())
    with pytest.raises(fi.FlowerInternalsError, match="no attribute 'generate_key_pairs'"):
        fi.patch_generated_node_key()


@pytest.mark.parametrize("enabled,logged,skipped", [("0", "0", True), ("1", "0", False),
                                                     ("0", "1", False)])
def test_telemetry_events_are_skipped_only_when_flower_would_drop_them(monkeypatch, enabled,
                                                                       logged, skipped):
    telemetry = types.ModuleType(fi.TELEMETRY)
    telemetry.FLWR_TELEMETRY_ENABLED, telemetry.FLWR_TELEMETRY_LOGGING = enabled, logged
    telemetry.create_event = stock = lambda event_type, event_details: "sent"
    monkeypatch.setattr(fi, "_module", lambda name: telemetry)
    assert fi.skip_disabled_telemetry() is skipped
    assert (telemetry.create_event is stock) is not skipped
    assert telemetry.create_event("ENTER", {}) == ("disabled" if skipped else "sent")
    del telemetry.create_event
    with pytest.raises(fi.FlowerInternalsError, match="no attribute 'create_event'"):
        fi.skip_disabled_telemetry()


def test_a_heartbeat_below_what_the_superlink_accepts_is_refused():
    with pytest.raises(fi.FlowerInternalsError, match="below the 10 s"):
        fi.patch_heartbeat(fi.Waits(heartbeat_interval=2))


def test_a_changed_wait_literal_is_reported(monkeypatch):
    monkeypatch.setattr(fi.inspect, "getsource", lambda module: "time.sleep(5)")
    with pytest.raises(fi.FlowerInternalsError, match=r"no longer calls time.sleep\(3\)"):
        fi.patch_supernode_waits(fi.Waits())


def test_another_flower_version_is_refused_or_falls_back_with_one_warning(monkeypatch,
                                                                          capsys):
    monkeypatch.setattr(fi.flwr, "__version__", "1.40.0")
    with pytest.raises(fi.FlowerInternalsError, match="1.40.0"):
        fi.apply_waits(fi.Waits(), supernode=False)
    assert fi.apply_waits(fi.Waits(), supernode=False, fallback=True) is False
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "keeping Flower's stock waits" in lines[0]


class FakeObjectStore:
    """Objects by id: preregistered ones are b"" until put."""

    contents: dict = {}
    trees: dict = {}

    def put(self, object_id, content):
        self.contents[object_id] = content

    def get(self, object_id):
        return self.contents.get(object_id)

    def get_object_tree(self, object_id):
        return self.trees[object_id]


class FakeNodeState:
    object_store = FakeObjectStore()

    def set_node_id(self, node_id):
        self.node_id = node_id

    def store_message(self, message):
        return message.metadata.message_id


class FakeLinkState:
    object_store = FakeObjectStore()

    def store_message_and_object_tree(self, message, object_tree, session_id):
        return True, []


def _tree(root, *children):
    from flwr.proto.message_pb2 import ObjectTree

    return ObjectTree(object_id=root, children=[ObjectTree(object_id=c) for c in children])


def _message(message_id, dst=5, reply_to=""):
    return types.SimpleNamespace(metadata=types.SimpleNamespace(
        message_id=message_id, dst_node_id=dst, run_id=99, reply_to_message_id=reply_to))


def _fakes(monkeypatch, **classes):
    FakeObjectStore.contents, FakeObjectStore.trees = {}, {}
    monkeypatch.setattr(fi, "_class", lambda where: classes[where[1]])


def _bells(monkeypatch):
    import uuid

    from fedsqueeze.server import doorbell

    monkeypatch.setenv(doorbell.ENV, f"fedsqueeze-test/{uuid.uuid4().hex}")
    return doorbell


def test_a_supernode_rings_its_executor_once_an_instruction_and_its_objects_are_in(
        monkeypatch):
    doorbell = _bells(monkeypatch)
    _fakes(monkeypatch, InMemoryNodeState=type("S", (FakeNodeState,), {}),
           InMemoryObjectStore=type("O", (FakeObjectStore,), {}))
    executor = doorbell.open_bell("exec", "127.0.0.1:9")
    sleeper = fi._ScaledSleep(fi.Waits(bell_cap=10.0, reply_fallback=10.0))
    fi.patch_supernode_bells(fi.Waits(bell_cap=10.0), sleeper,
                             doorbell.bell_name("exec", "127.0.0.1:9"))
    state, store = fi._class(fi.NODE_STATE)(), fi._class(fi.OBJECT_STORE)()
    FakeObjectStore.contents = {"m": b"", "a": b""}  # preregistered, not yet pulled
    FakeObjectStore.trees = {"m": _tree("m", "a")}
    try:
        state.set_node_id(17)
        assert sleeper.idle.bell is not None and sleeper.idle.cap == 10.0
        assert doorbell.ring(doorbell.bell_name("node", 17))
        started = time.monotonic()
        sleeper.sleep(fi.STOCK_IDLE_POLL)  # rung: returns at once, not after 10 s
        assert time.monotonic() - started < 5.0
        state.store_message(_message("m"))
        store.put("a", b"1")
        assert not executor.wait(0.05)  # the message's own object is still missing
        store.put("m", b"2")
        assert executor.wait(5.0)
        started = time.monotonic()
        state.store_message(_message("r", reply_to="m"))  # the ClientApp's reply
        sleeper.sleep(fi.STOCK_REPLY_WAIT)
        assert time.monotonic() - started < 5.0
        assert not executor.wait(0.05)  # a reply is not a task
    finally:
        executor.close()
        sleeper.idle.bell.close()


def test_the_superlink_rings_the_destination_once_a_message_and_its_objects_are_in(
        monkeypatch):
    doorbell = _bells(monkeypatch)
    _fakes(monkeypatch, InMemoryLinkState=type("L", (FakeLinkState,), {}),
           InMemoryObjectStore=type("O", (FakeObjectStore,), {}))
    node, server = doorbell.open_bell("node", 5), doorbell.open_bell("serverapp", 99)
    fi.patch_superlink_rings()
    state, store = fi._class(fi.LINK_STATE)(), fi._class(fi.OBJECT_STORE)()
    FakeObjectStore.contents = {"m1": b"", "shared": b"", "r1": b""}
    try:
        state.store_message_and_object_tree(_message("m1", dst=5), _tree("m1", "shared"), "s")
        store.put("m1", b"x")
        assert not node.wait(0.05)
        store.put("shared", b"y")
        assert node.wait(5.0) and not server.wait(0.01)
        # a reply whose objects are all there already (deduplicated): rings at once
        store.put("r1", b"z")
        state.store_message_and_object_tree(_message("r1", dst=1), _tree("r1", "shared"), "s")
        assert server.wait(5.0) and not node.wait(0.01)
    finally:
        node.close()
        server.close()


def test_a_message_whose_objects_never_come_is_forgotten_in_the_end():
    complete = fi.WhenComplete()
    store = types.SimpleNamespace(get=lambda oid: b"")
    for i in range(fi.WhenComplete.MAX_PENDING + 5):
        complete.expect(store, f"m{i}", [f"o{i}"], None)
    assert len(complete._pending) == fi.WhenComplete.MAX_PENDING
    assert "o0" not in complete._by_object and "o6" in complete._by_object


def test_a_missing_state_method_is_reported_by_name(monkeypatch):
    _fakes(monkeypatch, InMemoryNodeState=type("S", (), {}),
           InMemoryObjectStore=FakeObjectStore, InMemoryLinkState=type("L", (), {}))
    sleeper = fi._ScaledSleep(fi.Waits())
    with pytest.raises(fi.FlowerInternalsError, match="no attribute 'object_store'"):
        fi.patch_supernode_bells(fi.Waits(), sleeper, None)
    with pytest.raises(fi.FlowerInternalsError, match="no attribute 'object_store'"):
        fi.patch_superlink_rings()


def test_a_serverapps_reply_poll_wakes_on_the_runs_doorbell(monkeypatch):
    """Flower's `HttpGrid.send_and_receive` sleeps 3 s between reply pulls; patched, that
    sleep waits on `serverapp/<run id>` (the run id from `set_run`) and ends when it rings,
    or after the fallback poll; other sleeps are untouched."""
    _bells(monkeypatch)
    code = ("import threading, time; from fedsqueeze.deploy.accelerated.flower_internals import *; "
            "from fedsqueeze.server.doorbell import bell_name, ring; "
            "assert apply_waits(Waits(reply_poll_fallback=2.0), supernode=False, "
            "                   serverapp=True); "
            "import flwr.superlink.grid.http_grid as g; from flwr.supercore.run import Run; "
            "grid = g.HttpGrid.__new__(g.HttpGrid); "
            "grid.set_run(Run.create_empty(run_id=42)); assert g.time.run_id == 42; "
            "threading.Timer(0.3, ring, [bell_name('serverapp', 42)]).start(); "
            "t = time.monotonic(); g.time.sleep(3); woke = time.monotonic() - t; "
            "assert 0.25 < woke < 1.5, woke; "
            "t = time.monotonic(); g.time.sleep(2.5); assert time.monotonic() - t >= 2.5; "
            "print('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ))
    assert done.stdout.strip() == "ok", done.stderr


class _Call:
    def __init__(self, code, details=""):
        self._code, self._details = code, details

    def code(self):
        return self._code

    def details(self):
        return self._details


def _details(method, metadata=()):
    import collections

    Details = collections.namedtuple("Details", "method metadata timeout credentials")
    return Details(method, list(metadata), None, None)


@pytest.fixture
def auth_interceptors():
    """Flower's two node-auth interceptors with fedsqueeze's compact-auth patches, restored
    after."""
    from flwr.client.grpc_rere_client.node_auth_client_interceptor import (
        NodeAuthClientInterceptor,
    )
    from flwr.server.superlink.fleet.grpc_rere.node_auth_server_interceptor import (
        NodeAuthServerInterceptor,
    )

    saved = (NodeAuthClientInterceptor.intercept_unary_unary,
             NodeAuthServerInterceptor.intercept_service)
    fi.patch_compact_node_auth()
    fi.patch_compact_auth_server()
    yield NodeAuthClientInterceptor, NodeAuthServerInterceptor
    (NodeAuthClientInterceptor.intercept_unary_unary,
     NodeAuthServerInterceptor.intercept_service) = saved


FLOWER_AUTH = ("flwr-public-key-bin", "flwr-timestamp", "flwr-signature-bin")


def test_a_supernode_sends_one_compact_auth_header_and_falls_back_where_it_is_unknown(
        auth_interceptors):
    import grpc
    from flwr.supercore.primitives.asymmetric import generate_key_pairs

    client = auth_interceptors[0](*generate_key_pairs())
    pem, sent, answers = client.public_key_bytes, [], []

    def continuation(details, request):
        sent.append(dict(details.metadata))
        return answers.pop(0) if answers else _Call(grpc.StatusCode.OK)

    extra = [("flwr-package-name", "flwr"), ("flwr-package-version", "1.39.0"),
             ("flwr-component-name", "SuperNode")]
    client.intercept_unary_unary(continuation, _details("/flwr.proto.Fleet/ActivateNode",
                                                        extra), None)
    assert sent[-1]["flwr-public-key-bin"] == pem and "flwr-package-version" in sent[-1]
    client.intercept_unary_unary(continuation, _details("/flwr.proto.Fleet/PullMessages",
                                                        extra), None)
    assert not set(FLOWER_AUTH) & set(sent[-1]) and "flwr-package-version" not in sent[-1]
    header = sent[-1][fi.AUTH_HEADER]
    width = (client.private_key.curve.key_size + 7) // 8   # r and s: at most this each
    assert header[:8] == fi.key_id(pem) and len(header) <= 8 + 8 + 2 * width
    # a SuperLink that lost the key (restarted): this call again with Flower's headers
    answers[:] = [_Call(grpc.StatusCode.UNAUTHENTICATED, fi.UNKNOWN_KEY_ID)]
    client.intercept_unary_unary(continuation, _details("/flwr.proto.Fleet/PushObject"), None)
    assert set(FLOWER_AUTH) <= set(sent[-1]) and fi.AUTH_HEADER not in sent[-1]
    client.intercept_unary_unary(continuation, _details("/flwr.proto.Fleet/PushObject"), None)
    assert fi.AUTH_HEADER in sent[-1]
    # a stock SuperLink: Flower's headers from then on
    answers[:] = [_Call(grpc.StatusCode.UNAUTHENTICATED, "Missing authentication metadata")]
    client.intercept_unary_unary(continuation, _details("/flwr.proto.Fleet/PushObject"), None)
    client.intercept_unary_unary(continuation, _details("/flwr.proto.Fleet/PullObject"), None)
    assert all(s["flwr-public-key-bin"] == pem for s in sent[-2:])


@pytest.mark.parametrize("stamp", ["2026-12-06T23:01:02.000001+00:00",
                                   "2026-12-06T23:01:02+00:00",   # isoformat drops zero micros
                                   "1969-12-31T23:59:59.999999+00:00"])
def test_the_compact_header_gives_back_the_exact_timestamp_text_and_signature(stamp):
    from flwr.supercore.primitives.asymmetric import (
        generate_key_pairs,
        public_key_to_bytes,
        sign_message,
        verify_signature,
    )

    private, public = generate_key_pairs()
    signature = sign_message(private, stamp.encode("ascii"))
    header = fi.compact_auth(public_key_to_bytes(public), stamp, signature)
    key, text, der = fi.expand_auth(header)
    assert (key, text, der) == (fi.key_id(public_key_to_bytes(public)), stamp, signature)
    assert verify_signature(public, text.encode("ascii"), der)
    # a timestamp this form would not give back exactly keeps Flower's headers
    assert fi.compact_auth(b"k", "2026-12-06T23:01:02.000001+01:00", signature) is None
    assert fi.compact_auth(b"k", "not a time", signature) is None
    assert fi.expand_auth(header[:17]) is None


def test_the_superlink_puts_flowers_headers_back_and_refuses_an_unknown_id(auth_interceptors):
    """Flower's own checks run on every call: the signature and the timestamp are verified
    against the key the id names; an id never seen is refused with UNKNOWN_KEY_ID, before any
    of Flower's; a forged signature is refused by Flower's check."""
    import types

    import grpc
    from flwr.supercore.date import now
    from flwr.supercore.primitives.asymmetric import (
        generate_key_pairs,
        public_key_to_bytes,
        sign_message,
    )

    server = auth_interceptors[1](state_factory=None)
    private, public = generate_key_pairs()
    pem = public_key_to_bytes(public)
    reached, aborted = [], []
    context = types.SimpleNamespace(abort=lambda code, text: aborted.append((code, text)))

    def continuation(details):
        reached.append(dict(details.invocation_metadata))
        return grpc.unary_unary_rpc_method_handler(lambda request, context: "served")

    def call(metadata):
        return server.intercept_service(continuation, types.SimpleNamespace(
            method="/flwr.proto.Fleet/PullMessages", invocation_metadata=metadata))

    def flower_headers(key=private):
        stamp = now().isoformat()
        return stamp, sign_message(key, stamp.encode("ascii"))

    def compact(key=private):
        return ((fi.AUTH_HEADER, fi.compact_auth(pem, *flower_headers(key))),)

    def refused(metadata):
        aborted.clear()
        with pytest.raises(RuntimeError):  # Flower's terminator raises after aborting
            call(metadata).unary_unary(None, context)
        return aborted[0][1]

    assert refused(compact()) == fi.UNKNOWN_KEY_ID and not reached
    stamp, signature = flower_headers()
    call((("flwr-public-key-bin", pem), ("flwr-timestamp", stamp),
          ("flwr-signature-bin", signature)))                  # the key seen once, whole
    call(compact())                                            # then compact
    assert len(reached) == 2 and reached[-1]["flwr-public-key-bin"] == pem
    assert refused(compact(generate_key_pairs()[0])) == "Invalid signature"
    other = public_key_to_bytes(generate_key_pairs()[1])
    forged = fi.compact_auth(other, *flower_headers())
    assert refused(((fi.AUTH_HEADER, forged),)) == fi.UNKNOWN_KEY_ID   # a key never sent
    assert len(reached) == 2


def test_each_part_of_the_layer_can_be_left_out(monkeypatch):
    """`--flower-off` names parts (unknown ones are an error); a part left out is Flower's own
    in the processes that would have patched it."""
    assert fi.parts_off(" waits, compact-auth ") == ("waits", "compact-auth")
    with pytest.raises(ValueError, match="no part .* named nope: one of waits, doorbells"):
        fi.parts_off("waits,nope")
    monkeypatch.setenv(fi.PARTS_OFF_ENV, "compact-auth")
    assert fi.part_on("waits") and not fi.part_on("compact-auth")
    code = ("import time; from fedsqueeze.deploy.accelerated.flower_internals import *; "
            "assert apply_waits(Waits(), supernode=True); "
            "import flwr.supernode.start_client_internal as m; "
            "from flwr.client.grpc_rere_client.node_auth_client_interceptor import "
            "NodeAuthClientInterceptor as C; "
            "assert m.time is time, 'waits applied'; "
            "assert not hasattr(C.intercept_unary_unary, 'fedsqueeze_stock'), 'compact auth on'; "
            "import flwr.supercore.inflatable.inflatable_utils as u; "
            "assert u.pull_objects.__kwdefaults__['initial_backoff'] == Waits().pull_backoff; "
            "print('ok')")
    env = {**os.environ, fi.PARTS_OFF_ENV: "waits,compact-auth"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env=env)
    assert done.stdout.strip() == "ok", done.stderr


def test_the_deployment_docs_list_every_part_as_the_code_describes_it():
    docs = (Path(__file__).resolve().parents[2] / "docs" / "deployment.md").read_text()
    table = docs.split("## The parts")[1].split("\n## ")[0]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    assert rows == [f"| `{name}` | {change} |" for name, change in fi.PARTS.items()]
