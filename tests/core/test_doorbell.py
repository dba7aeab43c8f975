"""Doorbells: a ring wakes the waiter at once; without one the wait is the fallback poll."""

from __future__ import annotations

import sys
import threading
import time
import uuid

import pytest

from fedsqueeze.server import doorbell
from fedsqueeze.server.doorbell import Doorbell, bell_name, open_bell, ring

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="doorbells are Linux abstract sockets")


@pytest.fixture
def prefix(monkeypatch):
    value = f"fedsqueeze-test/{uuid.uuid4().hex}"
    monkeypatch.setenv(doorbell.ENV, value)
    return value


def test_a_ring_wakes_the_wait_at_once_and_a_burst_wakes_it_once(prefix):
    bell = open_bell("node", 7)
    try:
        started = time.monotonic()
        assert bell.wait(0.05) is False and time.monotonic() - started >= 0.05
        for _ in range(5):
            assert ring(bell_name("node", 7))
        started = time.monotonic()
        assert bell.wait(5.0) is True and time.monotonic() - started < 1.0
        assert bell.wait(0.01) is False  # the burst was consumed by one wait
    finally:
        bell.close()


def test_a_ring_from_another_thread_ends_a_long_wait(prefix):
    bell = open_bell("exec", "127.0.0.1:1")
    try:
        threading.Timer(0.1, ring, args=(bell_name("exec", "127.0.0.1:1"),)).start()
        started = time.monotonic()
        assert bell.wait(10.0) is True
        assert time.monotonic() - started < 5.0
    finally:
        bell.close()


def test_ringing_nobody_is_harmless_and_says_so(prefix):
    assert ring(bell_name("node", "nobody-waits-here")) is False
    assert ring(None) is False


def test_no_prefix_means_no_bells(monkeypatch):
    monkeypatch.delenv(doorbell.ENV, raising=False)
    assert bell_name("node", 1) is None
    assert open_bell("node", 1) is None


def test_a_taken_name_leaves_the_second_process_polling(prefix):
    first = open_bell("serverapp", 3)
    try:
        assert open_bell("serverapp", 3) is None
    finally:
        first.close()


def test_an_overlong_name_is_refused():
    with pytest.raises(ValueError, match="too long"):
        bell_name("node", "x" * 200, prefix="p")


def test_bells_of_two_launches_do_not_hear_each_other(monkeypatch):
    one = Doorbell(bell_name("node", 1, prefix="launch-a-" + uuid.uuid4().hex))
    try:
        assert ring(bell_name("node", 1, prefix="launch-b-" + uuid.uuid4().hex)) is False
        assert one.wait(0.01) is False
    finally:
        one.close()
