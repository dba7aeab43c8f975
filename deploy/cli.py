"""The `fedsqueeze` command: what Flower's CLI does not do for this project.

    fedsqueeze simulate --clients N [--run-config "k=v ..."]   Ray simulation via `flwr run`
    fedsqueeze deploy --clients N [--gpus 0,1] [--tls]          SuperLink + N SuperNodes, gRPC
    fedsqueeze server --clients N [--node-keys K.pub ...]      across hosts: the server host
    fedsqueeze client --server HOST:PORT --partitions 0,1 ...   across hosts: a client host
    fedsqueeze report RUN_DIR [RUN_DIR ...]                     table + PNG plots
    fedsqueeze compare PRESET [--engine E] [--rounds N]         every method, same work
    fedsqueeze side-by-side COMPARE_DIR [COMPARE_DIR ...]       settings in one table
    fedsqueeze methods [NAME]                                   methods, channels, their keys
    fedsqueeze partitions --clients N [--run-config ...]        per-client label histogram
    fedsqueeze stop-local                                       stop flwr's local SuperLink
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

from fedsqueeze.data import (
    DataError,
    format_histogram,
    label_histogram,
    load_split,
    partition_indices,
    plot_histogram,
)
from fedsqueeze.models import ModelError
from fedsqueeze.server.checkpoint import latest_checkpoint
from fedsqueeze.server.report import Run, report, round_table
from fedsqueeze.server.results import fmt_bytes
from fedsqueeze.server.side_by_side import side_by_side
from fedsqueeze.strategies.build import run_channels
from fedsqueeze.strategies.model_transform import FedParaConfig
from fedsqueeze.strategies.registry import get_method
from fedsqueeze.strategies.run_model import build_run_model
from fedsqueeze.strategies.settings import ConfigError, RunSettings, names_in

from .accelerated.flower_internals import PARTS, parts_off
from .catalog import catalog
from .compare import ENGINES, PRESETS, compare, config_text, preset_named
from .config_check import (
    checked_run_config,
    find_app_dir,
    is_fedsqueeze_app,
    parse_overrides,
)
from .launch.client_host import ClientOptions, run_clients
from .launch.deployment import FLOWERS, WIRE_FILE, DeployOptions, deploy
from .launch.faults import FaultError, parse_kills
from .launch.flower import require_grpc_flower, stop_local_superlink
from .launch.lifecycle import LaunchResult
from .launch.nodes import NodeHost
from .launch.processes import sigterm_as_interrupt
from .launch.server_host import ServerOptions, serve
from .launch.simulate import simulate
from .tune import parse_grid, tune

USER_ERRORS = (ConfigError, DataError, ModelError, FileNotFoundError, FaultError)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-config", action="append", metavar='"KEY=VALUE ..."',
                        help="run-config overrides, Flower's syntax (repeatable)")
    parser.add_argument("--app", help="Flower app directory (default: this checkout)")


def _run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results-dir", default="results",
                        help="parent of the run's directory")
    parser.add_argument("--run-name", help="directory name of this run (default: generated)")
    parser.add_argument("--quiet", action="store_true", help="do not echo Flower's logs")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing run of the same --run-name")
    parser.add_argument("--resume", type=Path, metavar="RUN_DIR",
                        help="continue this run directory from its last checkpoint (run-config "
                        "checkpoint-every), with its run config (--run-config may change keys)")
    _common(parser)


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
    _run_options(sim)

    dep = sub.add_parser("deploy", help="run the app on a local deployment: a SuperLink and "
                         "N SuperNodes talking gRPC over 127.0.0.1, wire bytes metered")
    dep.add_argument("--clients", type=int, required=True, help="number of SuperNodes")
    dep.add_argument("--gpus", default="", help="comma-separated GPU ids, assigned "
                     "round-robin to SuperNodes through CUDA_VISIBLE_DEVICES")
    dep.add_argument("--tls", action="store_true", help="TLS with a throwaway CA")
    dep.add_argument("--auth", action="store_true",
                     help="SuperNode authentication: a key pair per SuperNode, registered with "
                     "the SuperLink (implies --tls: Flower refuses it in cleartext)")
    dep.add_argument("--flower", choices=FLOWERS, default="accelerated",
                     help="accelerated (default): fedsqueeze's layer over Flower (shorter "
                     "waits, doorbells, the warm ClientApp executor, lighter middleware, compact "
                     "node auth; deploy/accelerated/); stock: Flower's own SuperLink, "
                     "SuperNodes, waits and executor")
    dep.add_argument("--supernode-flower", choices=FLOWERS,
                     help="the SuperNodes' Flower, if not --flower's (a mixed deployment)")
    dep.add_argument("--flower-off", default="", metavar="PART,...",
                     help="leave these parts of the accelerated layer out (to measure what "
                     f"each buys): {', '.join(PARTS)}")
    dep.add_argument("--kill", action="append", metavar="ROUND:PARTITION[,PARTITION...]",
                     help="fault injection: SIGKILL these SuperNodes in that round, once they "
                     "hold its message (repeatable)")
    dep.add_argument("--restart-after", type=float, metavar="SECONDS",
                     help="start every killed SuperNode again after this many seconds "
                     "(default: they stay dead)")
    dep.add_argument("--executor", choices=("warm", "stock"),
                     help="warm (the default with accelerated SuperNodes): one worker forks "
                     "a ClientApp per message from warm imports; stock (the default with "
                     "stock SuperNodes): Flower starts a new interpreter per message")
    _run_options(dep)

    srv = sub.add_parser("server", help="across hosts, on the server host: SuperLink, a wire "
                         "meter per partition where SuperNodes of other hosts connect (TLS "
                         "and SuperNode authentication by default), the app; prints the table")
    srv.add_argument("--clients", type=int, required=True,
                     help="SuperNodes (partitions 0..N-1) to wait for")
    srv.add_argument("--listen", default="0.0.0.0",
                     help="IPv4 address the SuperNodes reach (default 0.0.0.0: all)")
    srv.add_argument("--port", type=int, default=9092,
                     help="partition p's SuperNode connects to port + p (default 9092)")
    srv.add_argument("--node-keys", nargs="+", type=Path, default=[], metavar="KEY.pub",
                     help="SuperNode public keys to register (files, or folders of *.pub), "
                     "as `fedsqueeze client --keys-only` printed them")
    srv.add_argument("--tls-dir", type=Path, metavar="DIR",
                     help="the SuperLink's ca.crt, server.pem, server.key: yours, or made "
                     "here once (default: <results-dir>/tls); client hosts need ca.crt")
    srv.add_argument("--name", action="append", default=[], metavar="HOST",
                     help="a name or address client hosts use for this host beyond its own "
                     "(behind NAT, DNS): the certificate made here is valid for it")
    srv.add_argument("--insecure", action="store_true",
                     help="cleartext, no authentication (the default only on loopback)")
    srv.add_argument("--no-auth", action="store_true",
                     help="TLS without SuperNode authentication")
    srv.add_argument("--wait-timeout", type=float, default=600.0,
                     help="seconds to wait for every SuperNode to connect (default 600)")
    srv.add_argument("--flower", choices=FLOWERS, default="accelerated",
                     help="accelerated (default) or stock Flower on the server side")
    srv.add_argument("--flower-off", default="", metavar="PART,...",
                     help=f"leave these parts of the accelerated layer out: {', '.join(PARTS)}")
    _run_options(srv)

    cli = sub.add_parser("client", help="across hosts, on a client host: this host's "
                         "SuperNodes (and warm worker) for a `fedsqueeze server`")
    cli.add_argument("--server", required=True, metavar="HOST:PORT",
                     help="the server's address and --port (partition p connects to PORT + p)")
    cli.add_argument("--partitions", required=True, metavar="P,...",
                     help="this host's partition ids, e.g. 0,1")
    cli.add_argument("--clients", type=int, required=True,
                     help="partitions of the whole federation (the server's --clients)")
    cli.add_argument("--gpus", default="", help="this host's GPU ids, round-robin over its "
                     "SuperNodes (CUDA_VISIBLE_DEVICES)")
    cli.add_argument("--root-certificates", type=Path, metavar="CA.crt",
                     help="the server's ca.crt (it prints where it is)")
    cli.add_argument("--insecure", action="store_true", help="cleartext, for a server "
                     "started with --insecure")
    cli.add_argument("--keys-dir", type=Path, metavar="DIR",
                     help="SuperNode key pairs DIR/supernode-<p> (made once): authentication")
    cli.add_argument("--keys-only", action="store_true",
                     help="make (or find) the key pairs, print the public keys, exit")
    cli.add_argument("--flower", choices=FLOWERS, default="accelerated",
                     help="accelerated (default) or stock Flower SuperNodes")
    cli.add_argument("--executor", choices=("warm", "stock"),
                     help="ClientApp executor (default: warm with accelerated SuperNodes)")
    cli.add_argument("--max-wait", type=float, default=300.0,
                     help="seconds a SuperNode keeps trying to reach the server before it "
                     "ends (default 300): after the run, and before the server is up")
    cli.add_argument("--logs", type=Path, default=Path("fedsqueeze-client-logs"),
                     help="where the SuperNodes' logs go")

    rep = sub.add_parser("report", help="table and plots of one or more result directories")
    rep.add_argument("run_dirs", nargs="+", type=Path)
    rep.add_argument("--out", type=Path, help="where the PNG plots go")
    rep.add_argument("--rounds", action="store_true", help="also print per-round tables")

    cmp_ = sub.add_parser("compare", help="run every method of a preset on the same work "
                          "(reusing finished runs) and write the bytes-to-accuracy table and "
                          "plots")
    cmp_.add_argument("preset", nargs="?", help=f"one of {', '.join(PRESETS)}")
    cmp_.add_argument("--engine", choices=ENGINES, default="simulation",
                      help="simulation (default: in this process), ray (Flower's simulation "
                      "engine) or deployment (gRPC, wire bytes)")
    cmp_.add_argument("--rounds", type=int, help="rounds of every run (default: the preset's)")
    cmp_.add_argument("--only", default="", metavar="LABEL,...",
                      help="run only these of the preset's runs (and the reference)")
    cmp_.add_argument("--out", type=Path,
                      help="output folder (default: compare/<preset>[-engine][-rN])")
    cmp_.add_argument("--list", action="store_true", help="list the presets and their runs")

    met = sub.add_parser("methods", help="list the registered methods and channels with their "
                         "run-config keys and defaults")
    met.add_argument("name", nargs="?", default="", help="only this method or channel")
    met.add_argument("--app", help="Flower app directory (default: this checkout)")
    met.add_argument("--brief", action="store_true", help="one line each, no keys")

    sbs = sub.add_parser("side-by-side", help="one table of several `compare` folders (full "
                         "and partial participation, ...): bytes to each one's reference's "
                         "final accuracy minus a point, and downlinks with/without catch-up")
    sbs.add_argument("compare_dirs", nargs="+", type=Path)
    sbs.add_argument("--out", type=Path, help="also write the markdown here")

    tun = sub.add_parser("tune", help="pick one preset run's settings on the clients' "
                         "held-out local splits (never the test set)")
    tun.add_argument("preset", help=f"one of {', '.join(PRESETS)}")
    tun.add_argument("--row", required=True, help="the preset's run (label) to tune")
    tun.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                     help="values to try for a run-config key (repeat: every combination)")
    tun.add_argument("--rounds", type=int, required=True, help="rounds of every point")
    tun.add_argument("--holdout", type=float, default=0.1,
                     help="fraction of each client's data held out (default 0.1)")
    tun.add_argument("--out", type=Path,
                     help="output folder (default: tune/<preset>-<row>-r<rounds>)")

    stop = sub.add_parser("stop-local", help="stop the detached local SuperLink that "
                          "`flwr run` starts for :local: connections")
    stop.add_argument("--port", type=int, help="its HTTP port (default: "
                      "$FLWR_LOCAL_SUPERLINK_HTTP_API_PORT or 39091)")

    part = sub.add_parser("partitions", help="print (and plot) the per-client label histogram")
    part.add_argument("--clients", type=int, required=True)
    part.add_argument("--plot", type=Path, help="write a stacked-bar PNG here")
    _common(part)
    return parser


def resumed_config(run_dir: Path) -> dict:
    """The run config a run directory was started with, to continue it (`--resume`)."""
    if not (run_dir / "config.json").is_file():
        raise ConfigError(f"--resume {run_dir}: not a fedsqueeze run directory (no config.json)")
    if latest_checkpoint(run_dir) is None:
        raise ConfigError(f"--resume {run_dir}: it has no checkpoint (it ran with run-config "
                          "checkpoint-every = 0, or stopped before the first checkpoint round)")
    stored = json.loads((run_dir / "config.json").read_text())["run_config"]
    launcher_keys = ("results-dir", "run-name", "engine", "resume")
    return {**{k: v for k, v in stored.items() if k not in launcher_keys}, "resume": True}


def _overrides(args: argparse.Namespace) -> dict:
    resumed = resumed_config(args.resume.resolve()) if getattr(args, "resume", None) else {}
    return {**resumed, **parse_overrides(args.run_config)}


def prepare(args: argparse.Namespace) -> tuple[Path, dict, RunSettings]:
    """Check keys and values, dataset, model and partition before any process starts."""
    app_dir = find_app_dir(args.app)
    run_config = checked_run_config(app_dir, _overrides(args))
    settings = RunSettings.from_run_config(run_config)
    if args.clients < 1:
        raise ConfigError(f"--clients = {args.clients} is invalid: must be >= 1")
    if args.clients < settings.min_nodes:
        raise ConfigError(f"--clients = {args.clients} is fewer than run-config min-nodes = "
                          f"{settings.min_nodes}")
    method = get_method(settings.method)(settings, run_config)
    build_run_model(settings, method.transform)
    users = {settings.method, *(c.name for c in run_channels(method, run_config) if c)} | (
        {FedParaConfig.prefix} if method.transform is not None else set())
    for key in sorted(parse_overrides(args.run_config)):
        owner = key.split(".", 1)[0] if "." in key else None
        if owner is not None and owner not in users:
            print(f"fedsqueeze: warning: run-config '{key}' is a key of {owner!r}, which "
                  f"neither method = {settings.method!r} nor the run's channels use",
                  file=sys.stderr)
    return app_dir, run_config, settings


def client_partitions(settings: RunSettings, clients: int):
    _, labels = load_split(settings.dataset, "train", settings.data_dir or None,
                           download=settings.data_download)
    parts = partition_indices(labels, settings.partitioner, settings.num_partitions or clients,
                              settings.seed, **settings.partition_options())
    return labels, parts


def launch_config(args: argparse.Namespace, settings: RunSettings, engine: str,
                  extra: dict | None = None) -> tuple[Path, dict]:
    """The run's directory and the overrides the launcher submits."""
    client_partitions(settings, args.clients)  # bad partition settings fail here, not later
    if args.resume:
        run_dir = args.resume.resolve()
        results_parent, run_name = run_dir.parent, run_dir.name
    else:
        results_parent = Path(args.results_dir).resolve()
        run_name = args.run_name or settings.run_name or (
            f"{settings.method}-{engine}-{settings.dataset}-{settings.model}-"
            f"{datetime.now(UTC):%Y%m%d-%H%M%S}")
        run_dir = results_parent / run_name
    overrides = {**_overrides(args), **(extra or {}),
                 "results-dir": str(results_parent), "run-name": run_name, "engine": engine}
    if not args.resume:
        claim_run_dir(run_dir, args.overwrite)
    return run_dir, overrides


def claim_run_dir(run_dir: Path, overwrite: bool) -> None:
    """A fresh run directory: one that holds a run is an error, or with `overwrite` removed
    (no rows or node logs of the old run mixed into the new one's)."""
    if (run_dir / "config.json").exists() or (run_dir / WIRE_FILE).exists():
        if not overwrite:
            raise ConfigError(f"{run_dir} holds a run already: choose another --run-name, or "
                              "pass --overwrite to replace it")
        shutil.rmtree(run_dir)


def cmd_simulate(args: argparse.Namespace, console: Console) -> int:
    app_dir, _, settings = prepare(args)
    run_dir, overrides = launch_config(args, settings, "simulation")
    console.print(f"simulation: {args.clients} clients, method {settings.method}, "
                  f"{settings.num_server_rounds} rounds -> {run_dir}")
    result = simulate(app_dir, overrides, run_dir, clients=args.clients,
                      cpus_per_client=args.cpus_per_client,
                      gpus_per_client=args.gpus_per_client, echo=not args.quiet)
    return finish(result, console)


def cmd_deploy(args: argparse.Namespace, console: Console) -> int:
    require_grpc_flower()  # before anything is prepared or written
    if not is_fedsqueeze_app(find_app_dir(args.app)):
        return deploy_any_app(args, console)
    app_dir, _, settings = prepare(args)
    options = _deploy_options(args)
    extra = {"server-poll-interval": 3.0} if args.flower == "stock" else {}  # Flower's
    run_dir, overrides = launch_config(args, settings, "deployment", extra)
    console.print(f"{_deployment_header(options)}, method {settings.method}, "
                  f"{settings.num_server_rounds} rounds -> {run_dir}")
    result = deploy(app_dir, overrides, run_dir, options)
    if result.wire:
        explain_wire(result, console)
    return finish(result, console)


def _gpus(text: str) -> tuple[str, ...]:
    gpus = tuple(g.strip() for g in text.split(",") if g.strip())
    bad = [g for g in gpus if not g.isdigit()]
    if bad:
        raise ConfigError(f"--gpus {text!r}: GPU ids are non-negative integers "
                          f"(CUDA_VISIBLE_DEVICES), got {', '.join(bad)}")
    return gpus


def _deploy_options(args: argparse.Namespace) -> DeployOptions:
    if args.clients < 1:
        raise ConfigError(f"--clients = {args.clients} is invalid: must be >= 1")
    gpus = _gpus(args.gpus)
    kills = parse_kills(args.kill, args.clients)
    if args.restart_after is not None and (args.restart_after < 0 or not kills):
        raise ConfigError(f"--restart-after {args.restart_after}: needs --kill and a "
                          "non-negative number of seconds")
    return DeployOptions(clients=args.clients, gpus=gpus, tls=args.tls or args.auth,
                         auth=args.auth, flower=args.flower,
                         supernode_flower=args.supernode_flower or "",
                         flower_off=flower_parts_off(args.flower_off),
                         executor=args.executor or "", echo=not args.quiet, kills=tuple(kills),
                         restart_after=args.restart_after)


def flower_parts_off(text: str) -> tuple[str, ...]:
    try:
        return parts_off(text)
    except ValueError as err:
        raise ConfigError(f"--flower-off: {err}") from None


def _deployment_header(options: DeployOptions) -> str:
    return (f"deployment: SuperLink + {options.clients} SuperNodes over gRPC on 127.0.0.1"
            f"{' (TLS)' if options.tls else ''}"
            f"{', SuperNode authentication' if options.auth else ''}, {options.flower} Flower"
            + (f" (SuperNodes: {options.supernode_flower})"
               if options.supernode_flower != options.flower else "")
            + (f" without {', '.join(options.flower_off)}" if options.flower_off else "")
            + f", {options.executor} ClientApp executor"
            + (f", GPUs {','.join(options.gpus)}" if options.gpus else ""))


def deploy_any_app(args: argparse.Namespace, console: Console) -> int:
    """`fedsqueeze deploy --app DIR` for an app that is not fedsqueeze's: its own run config
    (Flower checks the keys), partition ids in each SuperNode's node config, and the wire
    bytes per SuperNode in `<run dir>/wire.json` and a table, whatever the app writes."""
    app_dir, run_dir = any_app_run_dir(args)
    options = _deploy_options(args)
    console.print(f"{_deployment_header(options)}, app {app_dir} -> {run_dir}")
    return any_app_outcome(deploy(app_dir, parse_overrides(args.run_config), run_dir, options),
                           console)


def any_app_run_dir(args: argparse.Namespace) -> tuple[Path, Path]:
    """(app, its fresh run directory) for an app that is not fedsqueeze's."""
    if args.resume:
        raise ConfigError("--resume continues a fedsqueeze run; this app is not fedsqueeze's")
    app_dir = find_app_dir(args.app)
    run_dir = Path(args.results_dir).resolve() / (
        args.run_name or f"{app_dir.name}-deployment-{datetime.now(UTC):%Y%m%d-%H%M%S}")
    claim_run_dir(run_dir, args.overwrite)
    run_dir.mkdir(parents=True, exist_ok=True)
    return app_dir, run_dir


def any_app_outcome(result: LaunchResult, console: Console) -> int:
    """Rows by round (if any), wire bytes per SuperNode, how it ended."""
    run_dir = result.results_dir
    if (run_dir / "rounds.jsonl").is_file():
        run = Run(run_dir)
        console.print(round_table(run))
        if not any(r["message_up"] is not None for r in run.rounds):
            console.print("payload and message bytes: the app's ServerApp does not use "
                          "fedsqueeze's Compressed (they are in its rows when it does)")
    print_wire_by_node(result.wire["by_node"], console)
    status = result.status.get("status", "unknown")
    if not result.succeeded or result.leftover_pids:
        left = f"; processes left behind: {result.leftover_pids}" if result.leftover_pids else ""
        console.print(f"[red]run {result.run_id} {status}: "
                      f"{result.status.get('status-details', '')}[/red] (logs: "
                      f"{result.logs_dir}){left}")
        return 1
    console.print(f"run {result.run_id} {status}; results: {run_dir} (rounds.jsonl, "
                  f"summary.json, {WIRE_FILE})")
    return 0


def _server_options(args: argparse.Namespace) -> ServerOptions:
    if args.clients < 1:
        raise ConfigError(f"--clients = {args.clients} is invalid: must be >= 1")
    try:
        loopback = ipaddress.IPv4Address(args.listen).is_loopback
    except ValueError:
        raise ConfigError(f"--listen {args.listen!r}: an IPv4 address of this host") from None
    tls = not args.insecure and not (loopback and not args.tls_dir)
    keys = [k for path in args.node_keys
            for k in (sorted(path.glob("*.pub")) if path.is_dir() else [path])]
    missing = [str(k) for k in keys if not k.is_file()]
    if missing:
        raise ConfigError(f"--node-keys: no such file: {', '.join(missing)}")
    auth = tls and not args.no_auth and (bool(keys) or not loopback)
    try:
        return ServerOptions(
            clients=args.clients, listen=args.listen, port=args.port,
            tls_dir=(args.tls_dir or Path(args.results_dir) / "tls").resolve() if tls else None,
            names=tuple(args.name), node_keys=tuple(keys), auth=auth,
            wait_timeout=args.wait_timeout, accelerated=args.flower == "accelerated",
            flower_off=flower_parts_off(args.flower_off), echo=not args.quiet)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def cmd_server(args: argparse.Namespace, console: Console) -> int:
    require_grpc_flower()
    options = _server_options(args)
    ours = is_fedsqueeze_app(find_app_dir(args.app))
    if ours:
        app_dir, _, settings = prepare(args)
        extra = {"server-poll-interval": 3.0} if args.flower == "stock" else {}
        run_dir, overrides = launch_config(args, settings, "deployment", extra)
        what = f"method {settings.method}, {settings.num_server_rounds} rounds"
    else:
        app_dir, run_dir = any_app_run_dir(args)
        overrides, what = parse_overrides(args.run_config), f"app {app_dir}"
    console.print(f"server: {options.clients} SuperNodes on {options.listen}:{options.port}+p"
                  f"{', TLS' if options.tls_dir else ', cleartext'}"
                  f"{', SuperNode authentication' if options.auth else ''}, {args.flower} "
                  f"Flower, {what} -> {run_dir}", highlight=False)
    result = serve(app_dir, overrides, run_dir, options,
                   say=lambda text: console.print(text, highlight=False))
    if not ours:
        return any_app_outcome(result, console)
    if result.wire:
        explain_wire(result, console)
    return finish(result, console)


def cmd_client(args: argparse.Namespace, console: Console) -> int:
    if args.clients < 1:
        raise ConfigError(f"--clients = {args.clients} is invalid: must be >= 1")
    try:
        partitions = tuple(int(p) for p in names_in(args.partitions))
    except ValueError:
        raise ConfigError(f"--partitions {args.partitions!r}: comma-separated integers") from None
    if not args.keys_only and not (args.root_certificates or args.insecure):
        raise ConfigError("the server speaks TLS unless started with --insecure: pass "
                          "--root-certificates with its ca.crt, or --insecure")
    executor = args.executor or ("warm" if args.flower == "accelerated" else "stock")
    try:
        options = ClientOptions(
            server=args.server, partitions=partitions,
            host=NodeHost(args.clients, _gpus(args.gpus), executor,
                          args.flower == "accelerated", max_wait=args.max_wait),
            root_certificates=None if args.insecure else args.root_certificates,
            keys_dir=args.keys_dir)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if args.keys_only:
        if args.keys_dir is None:
            raise ConfigError("--keys-only needs --keys-dir")
        for p, (key, made) in options.keys().items():
            print(f"# partition {p}: {key.public}{' (new)' if made else ''}\n"
                  + key.public.read_text().strip())
        print("# on the server host: fedsqueeze server ... --node-keys <these .pub files>")
        return 0
    return run_clients(options, args.logs.resolve(),
                       say=lambda text: console.print(text, highlight=False, markup=False))


def print_wire_by_node(wire: dict, console: Console) -> None:
    table = Table(title="wire bytes per SuperNode (TCP between it and the SuperLink)")
    for column in ("node", "messages up", "messages down", "polls up", "polls down",
                   "connection + unparsed"):
        table.add_column(column, justify="right")
    rows = [(f"partition {p}", n) for p, n in wire["nodes"].items()] + [("all", wire["total"])]
    for name, n in rows:
        table.add_row(name, fmt_bytes(n["message_up"]), fmt_bytes(n["message_down"]),
                      fmt_bytes(n["poll_up"]), fmt_bytes(n["poll_down"]),
                      fmt_bytes(sum(n[f"{k}_{d}"] for k in ("connection", "unparsed")
                                    for d in ("up", "down"))))
    console.print(table)
    inbound, outbound = wire["flower_inbound_bytes"], wire["flower_outbound_bytes"]
    if inbound is not None:
        console.print(f"Flower's own count of its messages: in {fmt_bytes(inbound)}, out "
                      f"{fmt_bytes(outbound or 0)}", highlight=False)


def explain_wire(result: LaunchResult, console: Console) -> None:
    w = result.wire
    check = w["message_vs_flower"]
    console.print(
        f"wire (TCP between SuperNodes and the SuperLink, inside rounds): up "
        f"{fmt_bytes(w['wire_up'])}, down {fmt_bytes(w['wire_down'])}; discovery (each SuperNode "
        f"also fetches the app bundle) {fmt_bytes(w['wire_setup_up'] + w['wire_setup_down'])}; "
        f"protocol seen by the relays: {', '.join(sorted(set(w['protocol'].values())))}; "
        "idle polling and heartbeats "
        f"outside rounds {fmt_bytes(w['wire_idle_up'] + w['wire_idle_down'])}.\n"
        "wire/message > 1: gRPC and HTTP/2 framing, headers and object ids (about 430 B per "
        "call with the accelerated layer; bench/framing.py), TLS records when on (polls and "
        "heartbeats during rounds are apart: wire_poll_*).\n"
        "message/payload > 1: Flower's object headers and ids, message metadata, config and "
        "metric records around the codec payload.\n"
        f"message layer vs Flower's own network-traffic (all phases): up "
        f"{_pct(check['up_ratio'])}, down {_pct(check['down_ratio'])}"
        + (f"; {len(w['wire_below_message'])} (round, client, direction) with wire < message "
           "(uploads deduplicated by the SuperLink's object store)"
           if w["wire_below_message"] else ""), highlight=False)


def _pct(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{ratio:.4f}x"


def finish(result: LaunchResult, console: Console) -> int:
    if result.leftover_pids:
        console.print(f"[red]processes left behind: {result.leftover_pids}[/red]")
    if (result.results_dir / "config.json").exists():
        report([result.results_dir], None, console, per_round=True)
    if not result.succeeded or result.leftover_pids:
        error = _server_error(result.results_dir)
        log = result.logs_dir / "run.log"
        if log.exists():
            tail = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
            console.print("last lines of the run's log:\n" + "\n".join(tail[-15:]),
                          highlight=False, markup=False)
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


def cmd_compare(args: argparse.Namespace, console: Console) -> int:
    if args.list:
        for preset in PRESETS.values():
            print(f"{preset.name}: {preset.description}")
            for label, keys in preset.runs:
                print(f"    {label:28s} {config_text(keys)}")
        return 0
    if not args.preset:
        raise ConfigError(f"compare needs a PRESET: one of {', '.join(PRESETS)} (--list shows "
                          "their runs)")
    only = [label.strip() for label in args.only.split(",") if label.strip()]
    compare(preset_named(args.preset), engine=args.engine, rounds=args.rounds, only=only,
            out=args.out, echo=lambda text: print(text, flush=True))
    return 0


def cmd_methods(args: argparse.Namespace, console: Console) -> int:
    try:
        print(catalog(find_app_dir(args.app), args.name, brief=args.brief))
    except KeyError:
        raise ConfigError(f"no method or channel named {args.name!r}; `fedsqueeze methods` "
                          "lists them") from None
    return 0


def cmd_side_by_side(args: argparse.Namespace, console: Console) -> int:
    text = side_by_side(args.compare_dirs)
    if args.out:
        args.out.write_text(text)
    print(text)
    return 0


def cmd_tune(args: argparse.Namespace, console: Console) -> int:
    if args.rounds < 1:
        raise ConfigError(f"--rounds {args.rounds}: must be >= 1")
    tune(preset_named(args.preset), args.row, parse_grid(args.grid), rounds=args.rounds,
         holdout=args.holdout, out=args.out, echo=lambda text: print(text, flush=True))
    return 0


def cmd_stop_local(args: argparse.Namespace, console: Console) -> int:
    stopped = stop_local_superlink(args.port)
    console.print(f"stopped {stopped} process(es)" if stopped else "no local SuperLink running")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 200)
    handler = {"simulate": cmd_simulate, "deploy": cmd_deploy, "report": cmd_report,
               "server": cmd_server, "client": cmd_client,
               "partitions": cmd_partitions, "stop-local": cmd_stop_local,
               "compare": cmd_compare, "side-by-side": cmd_side_by_side, "methods": cmd_methods,
               "tune": cmd_tune}[args.command]
    try:
        with sigterm_as_interrupt():  # same clean teardown as Ctrl-C
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
