"""The SuperLink's Control-API middlewares run for Control-API requests only (and the
event-log one wherever a plugin is set); Flower's stack is otherwise unchanged."""

from __future__ import annotations

import types

import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from fedsqueeze.deploy.accelerated import flower_internals as fi


class Recorder(BaseHTTPMiddleware):
    seen: list[str] = []

    async def dispatch(self, request, call_next):
        Recorder.seen.append(request.url.path)
        return await call_next(request)


def _client(logs_events: bool, plugin: object | None = None) -> TestClient:
    async def ok(_request):
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/v1/runtime/pull-messages", ok, methods=["POST"]),
                            Route("/v1/control/list-runs", ok, methods=["POST"])],
                    middleware=[Middleware(fi.ControlOnly, control=Recorder,
                                           logs_events=logs_events)])
    app.state.control_event_log_plugin = plugin
    return TestClient(app)


@pytest.mark.parametrize("logs_events", [False, True])
def test_a_control_middleware_sees_control_requests_only(logs_events):
    Recorder.seen = []
    client = _client(logs_events)
    assert client.post("/v1/runtime/pull-messages").text == "ok"
    assert client.post("/v1/control/list-runs").text == "ok"
    assert Recorder.seen == ["/v1/control/list-runs"]


def test_the_event_log_middleware_sees_every_request_once_a_plugin_is_set():
    Recorder.seen = []
    client = _client(logs_events=True, plugin=object())
    client.post("/v1/runtime/pull-messages")
    client.post("/v1/control/list-runs")
    assert Recorder.seen == ["/v1/runtime/pull-messages", "/v1/control/list-runs"]


def test_a_missing_control_middleware_is_reported_by_name(monkeypatch):
    import flwr.superlink.main as superlink

    stack = [m for m in superlink._get_middleware()
             if m.cls.__name__ != "ControlLicenseMiddleware"]
    fake = types.ModuleType(fi.SUPERLINK_APP)
    fake._get_middleware = lambda: stack
    real = fi._module
    monkeypatch.setattr(fi, "_module",
                        lambda name: fake if name == fi.SUPERLINK_APP else real(name))
    with pytest.raises(fi.FlowerInternalsError, match="no ControlLicenseMiddleware"):
        fi.patch_superlink_control_middleware()
    assert fake._get_middleware() == stack   # nothing was patched


class BodyReader(BaseHTTPMiddleware):
    """Reads the body before the app does, as Flower's protobuf translation does."""

    async def dispatch(self, request, call_next):
        body = await request.body()
        response = await call_next(request)
        response.headers["x-seen"] = str(len(body))
        return response


def test_runtime_unary_runs_the_dispatch_and_replays_the_body_to_the_app():
    async def echo(request):
        return PlainTextResponse((await request.body()).decode(), status_code=201,
                                 headers={"x-app": "1"})

    unary = frozenset({("POST", "/v1/runtime/pull-messages")})
    app = Starlette(routes=[Route("/v1/runtime/pull-messages", echo, methods=["POST"]),
                            Route("/v1/control/list-runs", echo, methods=["POST"])],
                    middleware=[Middleware(fi.RuntimeUnary, stock=Middleware(BodyReader),
                                           unary_paths=unary)])
    client = TestClient(app)
    for path in ("/v1/runtime/pull-messages", "/v1/control/list-runs"):  # fast and stock
        response = client.post(path, content=b"hello")
        assert (response.status_code, response.text) == (201, "hello")
        assert response.headers["x-app"] == "1" and response.headers["x-seen"] == "5"


def test_flowers_supernode_api_answers_the_same_with_our_patches(monkeypatch):
    """Flower's own SuperNode app, stock and with its translation layers run by
    `RuntimeUnary`: the same answers to a wrong media
    type, to a request without node state and to a malformed protobuf body."""
    import flwr.supernode.main as supernode

    requests = [("/v1/runtime/send-task-heartbeat", "text/plain", b""),
                ("/v1/runtime/send-task-heartbeat", "application/protobuf", b""),
                ("/v1/runtime/pull-object", "application/protobuf", b"\xff\xff"),
                ("/health", "application/json", b"")]

    def answers() -> list[tuple[int, bytes]]:
        client = TestClient(supernode.create_app(), raise_server_exceptions=False)
        return [(r.status_code, r.content) for r in (
            client.post(path, content=body, headers={"content-type": media_type})
            for path, media_type, body in requests)]

    stock = answers()
    monkeypatch.setattr(supernode, "create_app", supernode.create_app)  # restored after
    fi.patch_supernode_runtime_unary()
    assert answers() == stock
    assert {status for status, _ in stock} == {415, 503, 400, 405}


def test_a_stack_without_flowers_translation_layers_is_reported():
    wrap = fi._runtime_unary_wrapper("SuperNode")
    with pytest.raises(fi.FlowerInternalsError, match="SuperNode's middleware stack has no"):
        wrap([Middleware(Recorder)])
