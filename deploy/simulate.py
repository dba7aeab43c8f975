"""`fedsqueeze simulate`: the app on Flower's Ray simulation engine, through `flwr run`.

The launcher starts its own simulation SuperLink (instead of `flwr run`'s detached one, which
outlives the run), submits the app with `flwr run`, follows its logs, reads its real status,
and stops every process it started.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .flower import flower_env, start_superlink
from .launch import LaunchResult, launch_dir, run_app, settle_status
from .processes import ProcessGroup, sigterm_as_interrupt


def simulate(app_dir: Path, run_config: dict[str, object], results_dir: Path, *,
             clients: int, cpus_per_client: int, gpus_per_client: float,
             echo: bool = True) -> LaunchResult:
    """Run one simulation to its end; `run_config` must carry `results-dir` and `run-name`."""
    work = launch_dir(results_dir)
    logs = results_dir / "logs"
    env = flower_env(work / "flwr-home")
    federation = (f"num-supernodes={clients} client-resources-num-cpus={cpus_per_client} "
                  f"client-resources-num-gpus={gpus_per_client}")
    group = ProcessGroup(logs)
    run_id, status, link = 0, {}, None
    failure: BaseException | None = None
    try:
        with sigterm_as_interrupt():
            link = start_superlink(group, env, simulation=True)
            run_id, status = run_app(group, env, link, app_dir, run_config, logs, echo,
                                     federation)
    except BaseException as err:
        failure = err
        raise
    finally:
        superlink_exit = None if link is None else link.started.process.poll()
        leftover = group.stop_all()
        if not leftover:  # a process that would not stop may still use its Flower home
            shutil.rmtree(work, ignore_errors=True)
        settle_status(results_dir, status, failure, superlink_exit)
    return LaunchResult(run_id, status, results_dir, leftover, logs, group.launch_id)
