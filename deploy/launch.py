"""What both launchers share: submit the app to a SuperLink, follow it, read its real status."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .flower import SuperLink, run_status, stream_logs, submit_run, write_connection
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
    """`flwr run` the app on `link`, stream its logs until it ends; (run id, Flower's status)."""
    write_connection(Path(env["FLWR_HOME"]), link)
    run_id = submit_run(group, env, app_dir, run_config, federation_config)
    stream_logs(group, env, run_id, logs / "run.log", echo)
    return run_id, run_status(group, env, run_id)
