"""What both launchers share: their working directory, submitting the app to a SuperLink and
following it, and the run's status on every way a launch can end."""

from __future__ import annotations

import json
import shutil
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
from .processes import ProcessGroup


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
