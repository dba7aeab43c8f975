"""`fedsqueeze simulate`: the app on Flower's Ray simulation engine, through `flwr run`.

The launcher starts its own simulation SuperLink (instead of `flwr run`'s detached one, which
outlives the run), submits the app with `flwr run`, follows its logs, reads its real status,
and stops every process it started.
"""

from __future__ import annotations

from pathlib import Path

from .flower import flower_env, start_superlink
from .lifecycle import LaunchResult, launching, run_app


def simulate(app_dir: Path, run_config: dict[str, object], results_dir: Path, *,
             clients: int, cpus_per_client: int, gpus_per_client: float,
             echo: bool = True) -> LaunchResult:
    """Run one simulation to its end; `run_config` must carry `results-dir` and `run-name`."""
    federation = (f"num-supernodes={clients} client-resources-num-cpus={cpus_per_client} "
                  f"client-resources-num-gpus={gpus_per_client}")
    with launching(results_dir) as launch:
        env = flower_env(launch.work / "flwr-home")
        launch.link = start_superlink(launch.group, env, simulation=True)
        launch.run_id, launch.status = run_app(launch.group, env, launch.link, app_dir,
                                               run_config, launch.logs, echo, federation)
    return launch.result()
