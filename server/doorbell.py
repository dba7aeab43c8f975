"""Doorbells: a process that waits for work can be woken by the one that stores it.

Flower's processes find new work by polling (a SuperNode asks the SuperLink for messages, a
SuperExec asks its SuperNode for tasks, the ServerApp asks the SuperLink for replies). On a
small box, polls fast enough to keep a round short cost most of the CPU, and slow ones cost
latency. A doorbell removes that trade-off where both processes share a host: the waiter
sleeps on its bell with a long timeout, and whoever stores its work rings it. A ring is only a
hint (the waiter then polls as before), so a missed or unreachable bell costs latency, never
correctness: the timeout is the fallback poll.

A bell is a Linux abstract-namespace UNIX datagram socket (no file to clean up; it vanishes
with its process), named `<prefix>/<kind>/<key>`. The deployment launcher sets the prefix,
unique to its launch, in `FEDSQUEEZE_DOORBELLS` for every process it starts; without it (the
simulation engine, other platforms) there are no bells and everything polls.
"""

from __future__ import annotations

import os
import select
import socket
import sys

ENV = "FEDSQUEEZE_DOORBELLS"
_MAX_NAME = 100  # an abstract socket name must fit sockaddr_un's 107 bytes


def bell_name(kind: str, key: object, prefix: str | None = None) -> str | None:
    """`<prefix>/<kind>/<key>`, or None when this process has no doorbells."""
    prefix = os.environ.get(ENV) if prefix is None else prefix
    if not prefix or not sys.platform.startswith("linux"):
        return None
    name = f"{prefix}/{kind}/{key}"
    if len(name.encode()) > _MAX_NAME:
        raise ValueError(f"doorbell name too long ({len(name)} bytes): {name!r}")
    return name


class Doorbell:
    """The waiting side: bound to one name; `wait` returns early when someone rings."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            self._sock.bind("\0" + name)
        except OSError:
            self._sock.close()
            raise
        self._sock.setblocking(False)

    def wait(self, timeout: float) -> bool:
        """Sleep until rung or `timeout` seconds passed; True when rung. Rings that came
        while nobody waited count: they wake the next wait at once. Every ring pending is
        consumed, so a burst of rings wakes one wait."""
        readable, _, _ = select.select([self._sock], [], [], max(timeout, 0.0))
        if not readable:
            return False
        while True:
            try:
                self._sock.recv(16)
            except (BlockingIOError, InterruptedError):
                return True

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        self._sock.close()


def open_bell(kind: str, key: object) -> Doorbell | None:
    """This process's bell `<kind>/<key>`, or None without doorbells or when the name is
    taken (another process waits there; this one then polls)."""
    name = bell_name(kind, key)
    if name is None:
        return None
    try:
        return Doorbell(name)
    except OSError:
        return None


_ringer: socket.socket | None = None


def ring(name: str | None) -> bool:
    """Wake whoever waits on `name`; False when nobody does (or `name` is None). Never
    blocks: a full queue means a wake-up is pending already."""
    global _ringer
    if name is None:
        return False
    if _ringer is None:
        _ringer = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        _ringer.setblocking(False)
    try:
        _ringer.sendto(b"!", "\0" + name)
        return True
    except BlockingIOError:
        return True
    except OSError:  # nobody bound there (ECONNREFUSED, ENOENT)
        return False
