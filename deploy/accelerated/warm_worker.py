"""The warm ClientApp worker: serves the ClientApp API of SuperNodes started with
`--isolation process`, without starting a Python interpreter per message.

    python -m fedsqueeze.deploy.accelerated.warm_worker --insecure \\
        --serve 127.0.0.1:9094 [--serve 127.0.0.1:9095,parent=4711,gpus=1 ...]

Process tree: this process (the parent) imports Flower, numpy, torch and the fedsqueeze
ClientApp once, never touching CUDA, then forks one SuperExec per `--serve`d SuperNode
(Flower's own `run_superexec` loop; `parent=PID` makes it exit with that SuperNode, `gpus=`
sets its `CUDA_VISIBLE_DEVICES`). For every task a SuperExec acquires, it forks a child that
runs Flower's own `run_clientapp` (the token protocol, the FAB, `context.state` and error
replies stay Flower's) and reaps it when it ends; at most `--max-reading` children of a host
read their data partition at once (file locks that the workers of a launch share); the
children run without a cap unless `--max-running` sets one. Forked processes share the
parent's imported pages copy-on-write, so N SuperNodes cost one set of imports; the parent
first puts its anonymous memory in huge pages (`huge_pages.py`), so a fork and an exit
handle a few page-table entries instead of hundreds of thousands. Every forked process gets
SIGTERM when its parent dies (also when the launcher is SIGKILLed: the parent itself is
started with the same death signal). SIGUSR1 makes the parent write a status line
(`cuda_initialized`, its children) to its log.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import gc
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from fedsqueeze.server.doorbell import open_bell

from ..launch.processes import die_with_parent
from .flower_internals import (
    IdleBackoff,
    Waits,
    apply_waits,
    clientapp_entry,
    import_task_modules,
    install_executor,
    skip_disabled_telemetry,
)
from .huge_pages import collapse_anonymous_memory

CLIENT_APP_TASK = "flwr-clientapp"


@dataclass(frozen=True)
class Served:
    address: str
    parent_pid: int | None = None
    gpus: str | None = None

    @classmethod
    def parse(cls, text: str) -> Served:
        address, *options = text.split(",")
        fields: dict[str, str] = {}
        for option in options:
            key, sep, value = option.partition("=")
            if not sep or key not in ("parent", "gpus"):
                raise argparse.ArgumentTypeError(f"--serve {text!r}: options are parent=PID "
                                                 "and gpus=LIST")
            fields[key] = value
        if ":" not in address:
            raise argparse.ArgumentTypeError(f"--serve {text!r}: expected HOST:PORT")
        parent = int(fields["parent"]) if "parent" in fields else None
        return cls(address, parent, fields.get("gpus"))


class Slots:
    """At most `count` ClientApps of this host do something at once (the rest wait for a slot).

    A slot is an exclusive `flock` on one of `count` files, shared by the workers of a launch.
    The kernel releases it however its holder ends (SIGKILL included)."""

    def __init__(self, directory: Path, count: int, kind: str) -> None:
        self.paths = [directory / f"{kind}-{i}" for i in range(count)]
        for path in self.paths:
            path.touch()

    def acquire(self) -> int:
        """Block until a slot is free; returns the file descriptor that holds it."""
        while True:
            for path in self.paths:
                fd = os.open(path, os.O_RDWR)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return fd
                except BlockingIOError:
                    os.close(fd)
            time.sleep(0.02)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        fd = self.acquire()
        try:
            yield
        finally:
            os.close(fd)


@dataclass(frozen=True)
class Limits:
    """What a host's ClientApps may do at once. `reading`: read their partition (the
    memory-heavy step; without a limit, 50 SuperNodes' first tasks computed 50 partitions at
    once and filled a 24 GiB box). `running`: run at all (no limit by default, like Flower's
    own executor; with 10 SuperNodes on 2 cores a cap of 4 left the round time as it was)."""

    running: Slots | None = None
    reading: Slots | None = None


def _exit_code(err: SystemExit) -> int:
    return err.code if isinstance(err.code, int) else (0 if err.code is None else 1)


def _run_child(work) -> None:
    """In a freshly forked child: run `work()` and leave without returning to the caller."""
    code = 1
    try:
        die_with_parent()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGUSR1):
            signal.signal(signum, signal.SIG_DFL)
        work()
        code = 0
    except SystemExit as err:
        code = _exit_code(err)
    except BaseException:  # noqa: BLE001 - report anything, then leave
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


class PartitionHints:
    """A SuperExec holds the partition its ClientApps read, so those it forks later find it.

    A child that read its partition into CPU memory (`client.runtime.partition_loaded`) writes
    one JSON line to a pipe: the run settings and the partition. The SuperExec reads the same
    partition (`client.runtime.preload`) before it forks the next child, which then shares
    those pages instead of reading and converting its data again (about 35 ms of CPU per task
    for fc2 on FashionMNIST). CPU data only: a SuperExec never touches CUDA."""

    def __init__(self) -> None:
        from fedsqueeze.client import runtime

        self._runtime = runtime
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        self._pending = b""

    def in_child(self) -> None:
        """In a forked ClientApp child: report partitions read from now on."""
        os.close(self._read)
        os.set_blocking(self._write, False)  # a full pipe drops a hint, never blocks a task
        self._runtime.partition_loaded = self._report

    def _report(self, settings: object, partition_id: int, num_partitions: int) -> None:
        line = json.dumps({"settings": dataclasses.asdict(settings),  # type: ignore[arg-type]
                           "partition_id": partition_id, "num_partitions": num_partitions})
        try:
            os.write(self._write, line.encode() + b"\n")  # one write below PIPE_BUF: atomic
        except BlockingIOError:
            pass

    def take(self) -> None:
        """Preload every partition reported since the last call (after the run's plugins,
        which may register its dataset). A preload is a head start only: one that fails is
        reported here, and the task reads its partition itself (and fails there, if at all)."""
        from fedsqueeze.strategies.settings import RunSettings, import_plugins

        while True:
            try:
                chunk = os.read(self._read, 1 << 16)
            except BlockingIOError:
                break
            if not chunk:
                break
            self._pending += chunk
        *lines, self._pending = self._pending.split(b"\n")
        for line in lines:
            hint = json.loads(line)
            try:
                import_plugins(str(hint["settings"].get("plugins", "")))
                self._runtime.preload(RunSettings(**hint["settings"]), hint["partition_id"],
                                      hint["num_partitions"])
            except Exception as err:  # noqa: BLE001 - any failure only loses the head start
                print(f"preload of partition {hint['partition_id']} failed: {err!r}",
                      flush=True)


class ForkExecutor:
    """A Flower SuperExec executor (its `Executor` protocol) that forks per task.

    SuperExec asks for capacity before every task poll; while no task came, the answer waits
    (an idle back-off from `Waits.idle_poll` up to `poll_cap`), so idle SuperExecs poll their
    SuperNode a few times a second instead of twenty."""

    def __init__(self, backoff: IdleBackoff | None = None, limits: Limits = Limits(),
                 hints: PartitionHints | None = None) -> None:
        from flwr.supercore.superexec.executor.types import LaunchResult
        from flwr.supercore.tls import validate_and_resolve_root_certificates

        from fedsqueeze.client import runtime

        self._backoff, self._limits, self._hints = backoff, limits, hints
        self._runtime, self._results = runtime, LaunchResult
        self._certificates, self._entry = validate_and_resolve_root_certificates, clientapp_entry()
        self.children: set[int] = set()

    def get_eligible_capacity(self, supported_task_types, *, insecure=False,
                              root_certificates_path=None):
        if self._backoff is not None:
            self._backoff.sleep()
        return {t for t in supported_task_types if str(t) == CLIENT_APP_TASK}, set()

    def wait_for_capacity(self, task_type=None, *, fab_hash=None, insecure=False,
                          root_certificates_path=None) -> None:
        """Forking needs no capacity gate."""

    def launch(self, spec):
        if str(spec.task_type) != CLIENT_APP_TASK:
            return self._results.failed(f"the warm worker runs ClientApps only, not "
                                        f"{spec.task_type}")
        certificates = self._certificates(spec.root_certificates_path, spec.insecure)

        if self._hints is not None:
            self._hints.take()

        def work() -> None:
            if self._backoff is not None and self._backoff.bell is not None:
                self._backoff.bell.close()  # the SuperExec's, not this task's
            if self._hints is not None:
                self._hints.in_child()
            if self._limits.reading is not None:
                self._runtime.reading_gate = self._limits.reading.held
            if self._limits.running is not None:
                self._limits.running.acquire()  # held until this child exits
            self._entry(runtime_api_address=spec.runtime_api_address, token=spec.token,
                        insecure=spec.insecure, certificates=certificates,
                        parent_pid=spec.parent_pid,
                        runtime_dependency_install=spec.runtime_dependency_install)

        pid = os.fork()
        if pid == 0:
            _run_child(work)
        self.children.add(pid)
        if self._backoff is not None:
            self._backoff.reset()
        return self._results.accepted()

    def reconcile(self) -> None:
        """Reap ClientApp children that ended (and hold the partitions they reported)."""
        if self._hints is not None:
            self._hints.take()
        for pid in list(self.children):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                self.children.discard(pid)

    def close(self) -> None:
        for pid in list(self.children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        self.reconcile()


def _superexec(served: Served, insecure: bool, root_certificates: str | None,
               waits: Waits | None, limits: Limits) -> None:
    if served.gpus is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = served.gpus
    backoff = IdleBackoff(waits.idle_poll, waits.poll_cap, open_bell("exec", served.address),
                          waits.bell_cap) if waits else None
    run_superexec = install_executor(lambda: ForkExecutor(backoff, limits, PartitionHints()))
    run_superexec(runtime_api_address=served.address, insecure=insecure,
                  root_certificates_path=root_certificates, parent_pid=served.parent_pid,
                  runtime_dependency_install=False)


def _warm_imports() -> None:
    """What SuperExecs and ClientApp tasks import: done once, before any fork, so every forked
    process shares these pages instead of importing (and holding) its own copy (Flower's
    SuperExec loop alone is 0.3 CPU-s and 12 MiB per SuperExec). The partitioning code
    (flwr-datasets, HF datasets) is included: the first task of every SuperNode computes
    its partition (the cache has it from then on), and with 50 SuperNodes that is 50
    children at once."""
    import numpy  # noqa: F401
    import torch  # noqa: F401  (CPU only: CUDA stays untouched)

    import fedsqueeze.client.app  # noqa: F401
    import fedsqueeze.data.partition  # noqa: F401  (flwr-datasets, HF datasets)
    from fedsqueeze.strategies.channel import channel_names, get_channel
    from fedsqueeze.strategies.registry import get_method, method_names
    from fedsqueeze.strategies.settings import RunSettings, field_types

    import_task_modules()  # Flower's SuperExec loop and ClientApp entry

    for config in (RunSettings, *(get_method(name).Config for name in method_names()),
                   *(get_channel(name) for name in channel_names())):
        field_types(config)  # imports every method and channel, resolves their types


def _status(children: dict[int, Served]) -> str:
    import torch

    return json.dumps({"warm_worker": os.getpid(),
                       "cuda_initialized": bool(torch.cuda.is_initialized()),
                       "superexecs": {str(pid): s.address for pid, s in children.items()}})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fedsqueeze.deploy.accelerated.warm_worker",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", action="append", type=Served.parse, required=True,
                        metavar="HOST:PORT[,parent=PID][,gpus=LIST]",
                        help="a SuperNode's ClientApp (runtime) API address; repeatable")
    security = parser.add_mutually_exclusive_group(required=True)
    security.add_argument("--insecure", action="store_true",
                          help="the runtime API is plain HTTP (Flower's default on a host)")
    security.add_argument("--root-certificates", metavar="CA.PEM",
                          help="CA of a runtime API served with TLS")
    parser.add_argument("--stock-latency", action="store_true",
                        help="keep Flower's own object-pull back-off and task polling")
    parser.add_argument("--poll-cap", type=float, default=Waits().poll_cap,
                        help="idle task polls back off to this many seconds")
    parser.add_argument("--max-running", type=int, default=0,
                        help="ClientApps of this host running at once (default 0: no limit, "
                        "like Flower's own executor)")
    parser.add_argument("--max-reading", type=int, default=2 * (os.cpu_count() or 1),
                        help="ClientApps of this host reading their partition at once "
                        "(default: 2 per core; 0 = no limit)")
    parser.add_argument("--slot-dir", type=Path,
                        help="directory of the --max-running and --max-reading lock files, "
                        "shared by the workers of one launch (default: a temporary one of "
                        "this worker)")
    parser.add_argument("--fallback", action="store_true",
                        help="if Flower's internals changed, warn and keep its stock waits")
    parser.add_argument("--no-huge-pages", dest="huge_pages", action="store_false",
                        help="leave the imported memory in 4 KB pages (forks cost more)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    waits = None if args.stock_latency else Waits(poll_cap=args.poll_cap)
    if waits is not None and not apply_waits(waits, supernode=False, fallback=args.fallback):
        waits = None
    _warm_imports()
    skip_disabled_telemetry()
    gc.freeze()  # the imported objects leave the collector's lists: children do not copy them
    collapsed = collapse_anonymous_memory() if args.huge_pages else 0
    slot_dir = args.slot_dir or Path(tempfile.mkdtemp(prefix="fedsqueeze-slots-"))
    slot_dir.mkdir(parents=True, exist_ok=True)
    limits = Limits(
        running=Slots(slot_dir, args.max_running, "running") if args.max_running > 0 else None,
        reading=Slots(slot_dir, args.max_reading, "reading") if args.max_reading > 0 else None)
    children: dict[int, Served] = {}
    stopping = False

    def stop(signum, frame) -> None:
        nonlocal stopping
        stopping = True
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGUSR1, lambda s, f: print(_status(children), flush=True))
    for served in args.serve:
        pid = os.fork()
        if pid == 0:
            _run_child(lambda s=served: _superexec(s, args.insecure, args.root_certificates,
                                                   waits, limits))
        children[pid] = served
    print(f"warm worker {os.getpid()} serving " + ", ".join(s.address for s in args.serve)
          + f"; {collapsed >> 20} MB of its memory in huge pages", flush=True)
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        served = children.pop(pid, None)
        if served is not None and not stopping:
            print(f"SuperExec for {served.address} ended (status {status})", flush=True)
    if args.slot_dir is None:
        shutil.rmtree(slot_dir, ignore_errors=True)
    print(_status(children), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
