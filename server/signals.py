"""Stop signals as exceptions, so that `finally` and `except` blocks can still write results."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


class Interrupted(KeyboardInterrupt):
    """A stop signal arrived (`signum` says which)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"signal {signal.Signals(signum).name}")
        self.signum = signum


def _raise(signum: int, frame: object) -> None:
    raise Interrupted(signum)


@contextlib.contextmanager
def signals_raise(*signums: int) -> Iterator[None]:
    """Inside, each of `signums` raises `Interrupted`; the previous handlers come back on
    leaving. A no-op outside the main thread, where signal handlers cannot be set."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _raise) for s in signums}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def pass_on(err: Interrupted) -> None:
    """Hand a caught stop signal to the handler that was there before (Flower's graceful
    exit in its app processes)."""
    handler = signal.getsignal(err.signum)
    if callable(handler):
        handler(err.signum, None)
