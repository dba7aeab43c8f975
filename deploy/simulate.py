"""`fedsqueeze simulate`: the app on Flower's Ray simulation engine, through `flwr run`.

The launcher starts its own simulation SuperLink (instead of `flwr run`'s detached one, which
outlives the run), submits the app with `flwr run`, follows its logs, reads its real status,
and stops every process it started.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from .flower import flower_env, run_status, start_superlink, stream_logs, submit_run, \
    write_connection
from .processes import ProcessGroup


@dataclass
class LaunchResult:
    run_id: int
    status: dict
    results_dir: Path
    leftover_pids: list[int]
    logs_dir: Path

    @property
    def succeeded(self) -> bool:
        return str(self.status.get("status", "")).endswith("completed")


def simulate(app_dir: Path, run_config: dict[str, object], results_dir: Path, *,
             clients: int, cpus_per_client: int, gpus_per_client: float,
             echo: bool = True) -> LaunchResult:
    """Run one simulation to its end; `run_config` must carry `results-dir` and `run-name`."""
    work = Path(tempfile.mkdtemp(prefix="fedsqueeze-sim-"))
    flwr_home, logs = work / "flwr-home", results_dir / "logs"
    env = flower_env(flwr_home)
    federation = (f"num-supernodes={clients} client-resources-num-cpus={cpus_per_client} "
                  f"client-resources-num-gpus={gpus_per_client}")
    group = ProcessGroup(logs)
    try:
        link = start_superlink(group, env, simulation=True)
        write_connection(flwr_home, link.address, "insecure = true\n")
        run_id = submit_run(group, env, app_dir, run_config, federation)
        stream_logs(group, env, run_id, logs / "run.log", echo)
        status = run_status(group, env, run_id)
    finally:
        leftover = group.stop_all()
    return LaunchResult(run_id, status, results_dir, leftover, logs)
