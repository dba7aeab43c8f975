"""What every launcher shares: its working directory and processes, submitting the app to a
SuperLink and following it, and stopping everything and settling the run's status on every way
a launch can end."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fedsqueeze.server.results import close_run

from .flower import (
    AppWatch,
    SuperLink,
    run_status,
    stream_logs,
    submit_run,
    write_connection,
)
from .processes import ProcessGroup, sigterm_as_interrupt


@dataclass
class LaunchResult:
    run_id: int
    status: dict
    results_dir: Path
    leftover_pids: list[int]
    logs_dir: Path
    launch_id: str = ""  # every process of the launch carries it in its environment
    wire: dict = field(default_factory=dict)

    @property
    def succeeded(self) -> bool:
        return str(self.status.get("status", "")).endswith("completed")


def run_app(group: ProcessGroup, env: dict[str, str], link: SuperLink, app_dir: Path,
            run_config: dict[str, object], logs: Path, echo: bool,
            federation_config: str = "") -> tuple[int, dict]:
    """`flwr run` the app on `link`, stream its logs until it ends (or its app process died);
    (run id, Flower's status)."""
    write_connection(Path(env["FLWR_HOME"]), link)
    run_id = submit_run(group, env, app_dir, run_config, federation_config)
    stream_logs(group, env, run_id, logs / "run.log", echo, give_up=AppWatch(link))
    return run_id, run_status(group, env, run_id)


LAUNCH_DIR = ".launch"


def launch_dir(results_dir: Path) -> Path:
    """The launcher's working files (Flower's home, TLS keys) inside the run directory, so a
    launcher killed with SIGKILL leaves nothing in /tmp; what such a launcher left is removed
    here, by the next launch of the same run (a resume)."""
    work = results_dir / LAUNCH_DIR
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    return work


def settle_status(results_dir: Path, flower_status: dict, failure: BaseException | None,
                  superlink_exit: int | None) -> None:
    """Make summary.json say how the run ended, whatever the ServerApp managed to write:
    `interrupted` (the launcher was stopped), `server-lost` (the SuperLink died, or the
    ServerApp ended without a summary), `failed` (the launch itself failed). A summary the
    ServerApp finished is kept, except that a dead SuperLink overrides its `interrupted`."""
    if not (results_dir / "config.json").is_file():
        return  # the ServerApp never started a run
    path = results_dir / "summary.json"
    written = json.loads(path.read_text()) if path.is_file() else {}
    server_status = written.get("status")
    if superlink_exit is not None and server_status in (None, "interrupted"):
        close_run(results_dir, "server-lost", f"the SuperLink exited with code {superlink_exit} "
                  "while the run was going on")
    elif isinstance(failure, KeyboardInterrupt) and server_status in (None, "interrupted"):
        close_run(results_dir, "interrupted", "the launcher was stopped (Ctrl-C or SIGTERM)")
    elif server_status is None:
        if failure is not None:
            close_run(results_dir, "failed", f"the launch failed: {failure}")
        else:
            close_run(results_dir, "server-lost", "the ServerApp ended without writing a "
                      f"summary; Flower says: {flower_status.get('status', 'unknown')} "
                      f"{flower_status.get('status-details', '')}".rstrip())


def write_deployment(results_dir: Path, description: dict) -> None:
    """config.json's `deployment`: how the launcher ran the app (nothing if no run started)."""
    path = results_dir / "config.json"
    if path.is_file():
        config = json.loads(path.read_text())
        config["deployment"] = description
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        tmp.replace(path)


class Launch:
    """One launch in progress: its working directory, its processes, the SuperLink and what
    Flower said of the run; `before_stop`, `after_stop` and `after_settle` take the steps a
    launcher adds to its end (`end`)."""

    def __init__(self, results_dir: Path) -> None:
        self.results_dir = results_dir
        self.work = launch_dir(results_dir)
        self.logs = results_dir / "logs"
        self.group = ProcessGroup(self.logs)
        self.link: SuperLink | None = None
        self.run_id = 0
        self.status: dict = {}
        self.failure: BaseException | None = None
        self.leftover: list[int] = []
        self.wire: dict = {}
        self.before_stop: list[Callable[[], None]] = []  # e.g. the fault injector
        self.after_stop: list[Callable[[], None]] = []  # e.g. the wire meters
        self.after_settle: list[Callable[[], None]] = []  # e.g. wire bytes into the results

    def end(self) -> None:
        """Stop every process, remove the working directory unless a process would not stop
        (it may still use its Flower home), make summary.json say how the run ended, then run
        the launcher's own closing steps."""
        superlink_exit = None if self.link is None else self.link.started.process.poll()
        for step in self.before_stop:
            step()
        self.leftover = self.group.stop_all()
        for step in self.after_stop:
            step()
        if not self.leftover:
            shutil.rmtree(self.work, ignore_errors=True)
        settle_status(self.results_dir, self.status, self.failure, superlink_exit)
        for step in self.after_settle:
            step()

    def result(self) -> LaunchResult:
        return LaunchResult(self.run_id, self.status, self.results_dir, self.leftover,
                            self.logs, self.group.launch_id, self.wire)


@contextmanager
def launching(results_dir: Path) -> Iterator[Launch]:
    """The launch's life: SIGTERM and Ctrl-C end it like any failure, and however it ends
    (`Launch.end`) nothing it started is left running."""
    launch = Launch(results_dir)
    try:
        with sigterm_as_interrupt():
            yield launch
    except BaseException as err:
        launch.failure = err
        raise
    finally:
        launch.end()
