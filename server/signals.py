"""Stop signals as exceptions, so that `finally` and `except` blocks can still write results."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator

import psutil

LAUNCHER_PID_VAR = "FEDSQUEEZE_LAUNCHER_PID"  # set by the launcher for all it starts
ORPHANED_EXIT_CODE = 3


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


def exit_when_launcher_gone(grace: float, last_words: Callable[[], None],
                            poll: float = 0.5) -> threading.Thread | None:
    """In a process the launcher started (its pid in `FEDSQUEEZE_LAUNCHER_PID`): once the
    launcher is gone (SIGKILL leaves nobody to stop what it started) give the process `grace`
    s to end the usual way, then call `last_words` and exit. Flower's parent monitor turns a
    dead SuperLink into SIGINT, but a graceful exit that blocks on the dead SuperLink would
    keep the process alive for good. Returns the watching thread, None outside a launch."""
    pid = os.environ.get(LAUNCHER_PID_VAR)
    if not pid:
        return None
    try:
        launcher = psutil.Process(int(pid))
    except (psutil.NoSuchProcess, ValueError):
        launcher = None

    def alive() -> bool:
        try:  # is_running also tells a reused pid apart; a killed launcher may be a zombie
            return launcher.is_running() and launcher.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    def watch() -> None:
        while launcher is not None and alive():
            time.sleep(poll)
        time.sleep(grace)
        try:
            last_words()
        finally:
            os._exit(ORPHANED_EXIT_CODE)

    thread = threading.Thread(target=watch, name="launcher-watch", daemon=True)
    thread.start()
    return thread
