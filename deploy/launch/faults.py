"""Fault injection for deployments: SIGKILL chosen SuperNodes at chosen rounds, restart them.

`--kill 3:1,2` kills the SuperNodes of partitions 1 and 2 in round 3, as soon as their logs
show a message of round 3 (mid-round: the node holds its train message), or once round 3 has
passed without them. `--restart-after S` starts each killed SuperNode again after S seconds
(same partition, same wire relay, a new node id, empty `context.state`), as a crashed machine
coming back would; the ServerApp re-identifies it before its next round.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from .processes import Started


class FaultError(ValueError):
    """A --kill or --restart-after value that cannot be carried out."""


@dataclass(frozen=True)
class Kill:
    round: int
    partitions: tuple[int, ...]


def parse_kills(texts: list[str] | None, clients: int) -> list[Kill]:
    """`["3:1,2", "5:0"]` -> kills in round order; partitions checked against --clients."""
    kills = []
    for text in texts or []:
        head, sep, tail = text.partition(":")
        try:
            server_round = int(head)
            partitions = tuple(sorted({int(p) for p in tail.split(",") if p.strip()}))
        except ValueError:
            raise FaultError(f"--kill {text!r}: use ROUND:PARTITION[,PARTITION...], "
                             "for example 3:1,2") from None
        if not sep or not partitions or server_round < 1:
            raise FaultError(f"--kill {text!r}: use ROUND:PARTITION[,PARTITION...] with "
                             "ROUND >= 1")
        bad = [p for p in partitions if not 0 <= p < clients]
        if bad:
            raise FaultError(f"--kill {text!r}: partitions {bad} are not among the "
                             f"{clients} SuperNodes (0..{clients - 1})")
        kills.append(Kill(server_round, partitions))
    return sorted(kills, key=lambda k: k.round)


class Follower:
    """New complete lines of a growing file since the last call (the file is read once, in
    pieces, not again on every poll)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""

    def new_lines(self) -> list[str]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except OSError:
            return []
        self._offset += len(chunk)
        *lines, self._partial = (self._partial + chunk).split(b"\n")
        return [line.decode(errors="replace") for line in lines]


def _round_of(line: str) -> int:
    try:
        return int(json.loads(line)["round"])
    except (ValueError, KeyError, TypeError):
        return 0


def _kill_tree(started: Started) -> None:
    try:
        root = psutil.Process(started.process.pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)


class FaultInjector(threading.Thread):
    """Carries out the kills (and restarts) while the run goes on; `events` says what it did
    and when (unix time), for config.json.

    Restarts happen on this thread, which lives until `stop`: a process started with
    PR_SET_PDEATHSIG gets SIGTERM when the *thread* that forked it ends."""

    def __init__(self, kills: list[Kill], restart_after: float | None, rounds_path: Path,
                 node: Callable[[int], Started], restart: Callable[[int], None]) -> None:
        super().__init__(name="fault-injector", daemon=True)
        self.kills, self.restart_after = kills, restart_after
        self.node, self.restart = node, restart
        self._rounds = Follower(rounds_path)
        self._rounds_done = 0
        self._logs: dict[tuple[int, Path], Follower] = {}
        self._seen: set[tuple[int, int]] = set()  # (round, partition) seen in a node's log
        self.events: list[dict] = []
        self.errors: list[str] = []
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)

    def _reached(self, server_round: int, partition: int) -> bool:
        self._rounds_done = max([self._rounds_done,
                                 *map(_round_of, self._rounds.new_lines())])
        log = self.node(partition).log_path
        follower = self._logs.setdefault((partition, log), Follower(log))
        for line in follower.new_lines():
            if ", ROUND " in line:
                head = line.split(", ROUND ", 1)[1].split(":", 1)[0]
                if head.isdigit():
                    self._seen.add((int(head), partition))
        return (server_round, partition) in self._seen or self._rounds_done >= server_round

    def run(self) -> None:
        pending = [(kill.round, p) for kill in self.kills for p in kill.partitions]
        restarts: list[tuple[float, int, int]] = []  # (due, round, partition)
        while (pending or restarts) and not self._halt.is_set():
            if pending and self._reached(*pending[0]):
                server_round, partition = pending.pop(0)
                _kill_tree(self.node(partition))
                self._event("kill", server_round, partition)
                if self.restart_after is not None:
                    restarts.append((time.monotonic() + self.restart_after, server_round,
                                     partition))
                continue
            for due, server_round, partition in [r for r in restarts if r[0] <= time.monotonic()]:
                restarts.remove((due, server_round, partition))
                try:
                    self.restart(partition)
                except Exception as err:  # the run goes on without it; config.json says so
                    self.errors.append(f"restart of partition {partition} failed: {err}")
                    continue
                self._event("restart", server_round, partition)
            self._halt.wait(0.1)
        self._halt.wait()  # the restarted processes die with the thread that started them

    def _event(self, action: str, server_round: int, partition: int) -> None:
        self.events.append({"unix": time.time(), "action": action, "round": server_round,
                            "partition": partition})
