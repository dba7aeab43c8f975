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

from fedsqueeze.deploy import flower_internals as fi


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
