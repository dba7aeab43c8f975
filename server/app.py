"""The ServerApp: builds the method's strategy from run config and runs the rounds.

Nothing here names a method or a codec: the method comes from the registry.
"""

from __future__ import annotations

import signal
import time
from datetime import UTC, datetime
from logging import ERROR, INFO
from pathlib import Path

import flwr
from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.supercore import log

from fedsqueeze.strategies.build import build_strategy
from fedsqueeze.strategies.registry import get_method
from fedsqueeze.strategies.run_model import build_run_model
from fedsqueeze.strategies.settings import RunSettings, names_in
from fedsqueeze.strategies.sinks import sinks_named
from fedsqueeze.strategies.tensors import (
    count_nonzeros,
    model_arrays,
    to_arrayrecord,
    trainable_keys,
)

from .checkpoint import latest_checkpoint
from .doorbell import open_bell
from .evaluation import CentralEvaluator
from .loop import RoundRunner, RunFailure, client_state_lost, discover_clients, key_by_partition
from .metering import MeteredGrid
from .results import ResultsWriter, close_run, default_results_dir
from .signals import Interrupted, exit_when_launcher_gone, pass_on, signals_raise

ORPHAN_GRACE_S = 15.0  # a ServerApp outliving its launcher by this much ends itself
TRANSPORTS = {"simulation": "in-process (Ray engine)", "deployment": "grpc-rere (Fleet API)"}

app = ServerApp()


def run_directory(settings: RunSettings, run_id: int) -> Path:
    base = Path(settings.results_dir) if settings.results_dir else default_results_dir()
    if not base.is_absolute():
        base = Path.cwd() / base
    name = settings.run_name or (
        f"{settings.method}-{settings.dataset}-{settings.model}-"
        f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{run_id}")
    return base / name


def _orphaned(writer: ResultsWriter) -> None:
    """The launcher died and this ServerApp did not end: say so, unless it already did."""
    if not (writer.run_dir / "summary.json").is_file():
        close_run(writer.run_dir, "interrupted", f"the launcher died; the ServerApp did not "
                  f"stop within {ORPHAN_GRACE_S:.0f} s and ended itself after round "
                  f"{writer.rows[-1]['round'] if writer.rows else 0}")
    log(ERROR, "the launcher is gone: ServerApp exits (results in %s)", writer.run_dir)


def start_run(grid: Grid, run_config: dict, run_id: int) -> tuple[RoundRunner, ArrayRecord]:
    """Everything before the first round: the method's strategy, the results directory, the
    client directory (one identity exchange). Returns the round runner and the model to start
    from; with `resume`, the latest checkpoint's (the runner's `first_round` follows it)."""
    settings = RunSettings.from_run_config(run_config)
    method = get_method(settings.method)(settings, run_config)
    model = build_run_model(settings, method.transform)
    # the loop samples (seeded, by partition) and gives the strategy the sample to take whole;
    # it meters every message at the grid
    strategy = build_strategy(method, model, run_config, meter=False, fraction_train=1.0,
                              min_train_nodes=1, min_available_nodes=1)
    evaluator = CentralEvaluator(settings, model)
    initial = to_arrayrecord(model_arrays(model))

    run_dir = run_directory(settings, run_id)
    started_utc = datetime.now(UTC).isoformat(timespec="seconds")
    first_round = 1
    if settings.resume:
        checkpoint = latest_checkpoint(run_dir)
        if checkpoint is None:
            raise RunFailure(f"resume: {run_dir} has no checkpoint (run-config "
                             "checkpoint-every was 0, or no checkpoint round was reached)")
        if hasattr(strategy, "import_state"):
            strategy.import_state(checkpoint.state)
        initial = to_arrayrecord({key: checkpoint.arrays[key] for key in model_arrays(model)})
        first_round = checkpoint.round + 1
        writer = ResultsWriter.resume(run_dir, checkpoint.round,
                                      {**dict(run_config), **method.run_config()},
                                      {"run_id": run_id, "started_utc": started_utc},
                                      sinks_named(names_in(settings.sinks), run_dir))
        log(INFO, "resuming %s after round %d (its checkpoint)", run_dir, checkpoint.round)
    else:
        writer = ResultsWriter(run_dir, {
            "run_config": {**dict(run_config), **method.run_config()},
            "flwr_version": flwr.__version__,
            "engine": settings.engine or "unknown",
            "transport": TRANSPORTS.get(settings.engine, "unknown"),
            "run_id": run_id,
            "started_utc": started_utc,
        }, sinks=sinks_named(names_in(settings.sinks), run_dir))
    log(INFO, "results: %s", run_dir)
    exit_when_launcher_gone(ORPHAN_GRACE_S, lambda: _orphaned(writer))
    trainable = trainable_keys(model)

    def nonzeros_of(arrays: dict) -> tuple[int, int]:
        return count_nonzeros(arrays, trainable)

    model_values = sum(int(a.size) for a in model_arrays(model).values())
    metered = MeteredGrid(grid, poll_interval=settings.server_poll_interval,
                          max_payload_elements=2 * model_values,  # no payload holds more
                          bell=open_bell("serverapp", run_id))
    runner = RoundRunner(metered, strategy, settings, writer, evaluator, nonzeros_of,
                         first_round=first_round)
    try:
        directory, clients, window = discover_clients(metered, settings)
    except Exception as err:
        writer.finish("failed", time.monotonic() - runner.started, error=str(err))
        raise
    runner.directory = directory
    key_by_partition(strategy, directory)
    if settings.resume:  # the clients of a resumed run start without their context.state
        for partition_id in directory.partition_ids:
            client_state_lost(strategy, partition_id)
    engine = settings.engine or str(next(iter(clients.values())).get("engine", "unknown"))
    writer.update_config(engine=engine, transport=TRANSPORTS.get(engine, "unknown"),
                         clients={str(pid): info for pid, info in sorted(clients.items())},
                         discovery={**metered.totals(["discovery"]),
                                    "window_unix": list(window)})
    return runner, initial


def finish_run(runner: RoundRunner, initial: ArrayRecord) -> ArrayRecord:
    """Every round, then summary.json (`completed`, or `failed` with the error)."""
    writer = runner.writer
    try:
        final = runner.run(initial)
    except KeyboardInterrupt as err:  # SIGTERM (the SuperExec stopping it) or Ctrl-C
        writer.finish("interrupted", time.monotonic() - runner.started,
                      error=f"interrupted ({err or 'SIGINT'}) after round {runner.last_round}")
        log(ERROR, "run interrupted after round %d (results so far in %s)", runner.last_round,
            writer.run_dir)
        raise
    except Exception as err:
        writer.finish("failed", time.monotonic() - runner.started, error=str(err))
        log(ERROR, "run failed: %s (results so far in %s)", err, writer.run_dir)
        raise
    summary = writer.finish("completed", time.monotonic() - runner.started)
    log(INFO, "run completed: final accuracy %s, results in %s", summary["final_accuracy"],
        writer.run_dir)
    return final


@app.main()
def main(grid: Grid, context: Context) -> None:
    try:  # a stopped ServerApp (SIGTERM, or SIGINT when its SuperLink died) says so in summary
        with signals_raise(signal.SIGTERM, signal.SIGINT):
            runner, initial = start_run(grid, dict(context.run_config), context.run_id)
            finish_run(runner, initial)
    except Interrupted as err:
        pass_on(err)  # then Flower's own graceful exit
        raise
