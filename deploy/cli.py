"""The `fedsqueeze` command: what Flower's CLI does not do for this project.

    fedsqueeze simulate --clients N [--run-config "k=v ..."]   Ray simulation via `flwr run`
    fedsqueeze report RUN_DIR [RUN_DIR ...]                     table + PNG plots
    fedsqueeze partitions --clients N [--run-config ...]        per-client label histogram
    fedsqueeze stop-local                                       stop flwr's local SuperLink
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

from rich.console import Console

from fedsqueeze.data import (
    DataError,
    format_histogram,
    label_histogram,
    load_split,
    partition_indices,
    plot_histogram,
)
from fedsqueeze.models import ModelError
from fedsqueeze.server.report import report
from fedsqueeze.strategies.run_model import build_run_model
from fedsqueeze.strategies.settings import ConfigError, RunSettings

from .config_check import checked_run_config, find_app_dir, parse_overrides
from .flower import stop_local_superlink
from .simulate import simulate

USER_ERRORS = (ConfigError, DataError, ModelError, FileNotFoundError)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-config", action="append", metavar='"KEY=VALUE ..."',
                        help="run-config overrides, Flower's syntax (repeatable)")
    parser.add_argument("--app", help="Flower app directory (default: this checkout)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedsqueeze", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    sim = sub.add_parser("simulate", help="run the app on Flower's Ray simulation engine")
    sim.add_argument("--clients", type=int, required=True, help="number of simulated SuperNodes")
    sim.add_argument("--cpus-per-client", type=int, default=1,
                     help="CPU cores Ray reserves per client (integer)")
    sim.add_argument("--gpus-per-client", type=float, default=0.0,
                     help="fraction of a GPU per client (e.g. 0.25)")
    sim.add_argument("--results-dir", default="results", help="parent of the run's directory")
    sim.add_argument("--run-name", help="directory name of this run (default: generated)")
    sim.add_argument("--quiet", action="store_true", help="do not echo Flower's logs")
    _common(sim)

    rep = sub.add_parser("report", help="table and plots of one or more result directories")
    rep.add_argument("run_dirs", nargs="+", type=Path)
    rep.add_argument("--out", type=Path, help="where the PNG plots go")
    rep.add_argument("--rounds", action="store_true", help="also print per-round tables")

    stop = sub.add_parser("stop-local", help="stop the detached local SuperLink that "
                          "`flwr run` starts for :local: connections")
    stop.add_argument("--port", type=int, help="its HTTP port (default: "
                      "$FLWR_LOCAL_SUPERLINK_HTTP_API_PORT or 39091)")

    part = sub.add_parser("partitions", help="print (and plot) the per-client label histogram")
    part.add_argument("--clients", type=int, required=True)
    part.add_argument("--plot", type=Path, help="write a stacked-bar PNG here")
    _common(part)
    return parser


def prepare(args: argparse.Namespace) -> tuple[Path, dict, RunSettings]:
    """Check keys and values, dataset, model and partition before any process starts."""
    app_dir = find_app_dir(args.app)
    run_config = checked_run_config(app_dir, parse_overrides(args.run_config))
    settings = RunSettings.from_run_config(run_config)
    if args.clients < 1:
        raise ConfigError(f"--clients = {args.clients} is invalid: must be >= 1")
    if args.clients < settings.min_nodes:
        raise ConfigError(f"--clients = {args.clients} is fewer than run-config min-nodes = "
                          f"{settings.min_nodes}")
    build_run_model(settings)
    return app_dir, run_config, settings


def client_partitions(settings: RunSettings, clients: int):
    _, labels = load_split(settings.dataset, "train", settings.data_dir or None,
                           download=settings.data_download)
    parts = partition_indices(labels, settings.partitioner, settings.num_partitions or clients,
                              settings.seed, classes_per_partition=settings.partition_classes,
                              class_assignment=settings.class_assignment,
                              alpha=settings.dirichlet_alpha)
    return labels, parts


def cmd_simulate(args: argparse.Namespace, console: Console) -> int:
    app_dir, run_config, settings = prepare(args)
    client_partitions(settings, args.clients)  # bad partition settings fail here, not in Ray
    results_parent = Path(args.results_dir).resolve()
    run_name = args.run_name or settings.run_name or (
        f"{settings.method}-{settings.dataset}-{settings.model}-"
        f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S}")
    run_dir = results_parent / run_name
    overrides = {**parse_overrides(args.run_config), "results-dir": str(results_parent),
                 "run-name": run_name, "engine": "simulation"}
    console.print(f"simulation: {args.clients} clients, method {settings.method}, "
                  f"{settings.num_server_rounds} rounds -> {run_dir}")
    result = simulate(app_dir, overrides, run_dir, clients=args.clients,
                      cpus_per_client=args.cpus_per_client,
                      gpus_per_client=args.gpus_per_client, echo=not args.quiet)
    return finish(result, console)


def finish(result, console: Console) -> int:
    if result.leftover_pids:
        console.print(f"[red]processes left behind: {result.leftover_pids}[/red]")
    if (result.results_dir / "config.json").exists():
        report([result.results_dir], None, console, per_round=True)
    if not result.succeeded or result.leftover_pids:
        error = _server_error(result.results_dir)
        console.print(f"[red]run {result.run_id} {result.status.get('status')}: "
                      f"{error or result.status.get('status-details')}[/red] "
                      f"(logs: {result.logs_dir})")
        return 1
    return 0


def _server_error(run_dir: Path) -> str | None:
    path = run_dir / "summary.json"
    return json.loads(path.read_text()).get("error") if path.exists() else None


def cmd_report(args: argparse.Namespace, console: Console) -> int:
    report(args.run_dirs, args.out, console, per_round=args.rounds)
    return 0


def cmd_partitions(args: argparse.Namespace, console: Console) -> int:
    _, _, settings = prepare(args)
    labels, parts = client_partitions(settings, args.clients)
    hist = label_histogram(labels, parts, int(labels.max()) + 1)
    console.print(format_histogram(hist), highlight=False)
    if args.plot:
        plot_histogram(hist, args.plot)
        console.print(f"plot: {args.plot}")
    return 0


def cmd_stop_local(args: argparse.Namespace, console: Console) -> int:
    stopped = stop_local_superlink(args.port)
    console.print(f"stopped {stopped} process(es)" if stopped else "no local SuperLink running")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 200)
    handler = {"simulate": cmd_simulate, "report": cmd_report,
               "partitions": cmd_partitions, "stop-local": cmd_stop_local}[args.command]
    try:
        return handler(args, console)
    except USER_ERRORS as err:
        print(f"fedsqueeze: error: {err}", file=sys.stderr)
        return 2
    except (RuntimeError, TimeoutError) as err:
        print(f"fedsqueeze: launch failed: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fedsqueeze: interrupted; every process it started was stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
