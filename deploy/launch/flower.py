"""Driving Flower's own processes and CLI: a private FLWR_HOME, a SuperLink, `flwr run/log/ls`.

Measured facts this relies on (Flower 1.39): `flwr run --format json` prints the run id; `flwr
log RID CONN --stream` returns when the run ends; `flwr run` can exit 0 for a failed run, so the
real outcome is `flwr ls CONN --run-id RID --format json`'s `status`. Connections live in
`$FLWR_HOME/config.toml`.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import random
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from fedsqueeze.strategies.settings import ConfigError

from .processes import CHILD_SETUP, ProcessGroup, Started, stop_tree, wait_until
from .tls import TlsFiles

CONNECTION = "fedsqueeze"
GRPC_FLOWER = ("1", "39")  # the last Flower whose SuperNodes talk gRPC to the SuperLink


def require_grpc_flower(version: str | None = None) -> None:
    """The deployment layer (gRPC Fleet API, wire meter, accelerations) runs on Flower 1.39.x
    only (1.40 moved the SuperNode link to HTTP); any other Flower gets a ConfigError that
    says what to install. `version`: Flower's (default: the installed one)."""
    version = version or importlib.metadata.version("flwr")
    if tuple(version.split(".")[:2]) != GRPC_FLOWER:
        raise ConfigError(
            f"this environment has Flower {version}; fedsqueeze's deployments (SuperLink and "
            f"SuperNodes over gRPC, wire meter) need Flower {'.'.join(GRPC_FLOWER)}.x, the "
            "last whose SuperNodes talk gRPC: pip install 'fedsqueeze[deploy]' (it pins "
            "flwr 1.39.*). The library (channels, Compressed, compression_mod, the methods) "
            "and Flower's simulation work with any Flower from 1.39.")

# The launcher's entry points around Flower's own (short waits, doorbells), and the names by
# which a process of each kind is found, Flower's first (what `--flower stock` starts).
SUPERLINK_ENTRY = "fedsqueeze.deploy.accelerated.superlink_main"
SUPERNODE_ENTRY = "fedsqueeze.deploy.accelerated.supernode_main"
# what the launcher's flwr-serverapp runs
SERVERAPP_ENTRY = "fedsqueeze.deploy.accelerated.serverapp_main"
WARM_WORKER_ENTRY = "fedsqueeze.deploy.accelerated.warm_worker"
PROCESS_NAMES = {"superlink": ("flower-superlink", SUPERLINK_ENTRY),
                 "supernode": ("flower-supernode", SUPERNODE_ENTRY),
                 "serverapp": ("flwr-serverapp", SERVERAPP_ENTRY),
                 "clientapp": ("flwr-clientapp", "flower-superexec", WARM_WORKER_ENTRY)}


EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_handed_out: set[int] = set()
_handed_out_lock = threading.Lock()
_random = random.SystemRandom()  # not the global generator, which runs may seed


def ephemeral_ports() -> range | None:
    """The kernel's range for the local ports of outgoing connections (Linux), else None."""
    try:
        low, high = map(int, EPHEMERAL_RANGE.read_text().split())
    except (OSError, ValueError):
        return None
    return range(low, high + 1)


def free_port() -> int:
    """A port of 127.0.0.1 that is free now and was not handed out before, for a server that
    binds it later. Picked below the kernel's ephemeral range where there is room: outgoing
    connections (every SuperNode opens several) take their local ports from that range, so a
    port picked there can be taken before its server binds it (seen with 50 SuperNodes:
    `address already in use`)."""
    ephemeral = ephemeral_ports()
    candidates = range(10000, ephemeral.start) if ephemeral and ephemeral.start > 11000 else None
    with _handed_out_lock:
        for _ in range(200 if candidates else 0):
            port = _random.choice(candidates)
            if port not in _handed_out and _bindable(port):
                _handed_out.add(port)
                return port
        while True:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind(("127.0.0.1", 0))
                port = int(sock.getsockname()[1])
            if port not in _handed_out:
                _handed_out.add(port)
                return port


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def flower_env(flwr_home: Path) -> dict[str, str]:
    """The environment for Flower's processes: private home, no telemetry, venv on PATH."""
    bin_dir = str(Path(sys.executable).parent)
    env = dict(os.environ)
    env.update({
        "FLWR_HOME": str(flwr_home),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "PATH": bin_dir + os.pathsep + env.get("PATH", ""),
        "PYTHONUNBUFFERED": "1",
    })
    return env


def flower_command(name: str) -> str:
    """Path of a Flower console script of this interpreter's environment."""
    candidate = Path(sys.executable).parent / name
    found = str(candidate) if candidate.exists() else shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"'{name}' not found next to {sys.executable} or on PATH: "
                                "is flwr installed in this environment?")
    return found


def shim_commands(env: dict[str, str], directory: Path, modules: dict[str, str]) -> None:
    """Put executables named like Flower's console scripts first on `env`'s PATH, each running
    one of our modules with this interpreter: Flower starts some processes by bare name (the
    SuperLink's SuperExec starts `flwr-serverapp`), and this is how ours run instead."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, module in modules.items():
        shim = directory / name
        shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m {module} "$@"\n')
        shim.chmod(0o755)
    env["PATH"] = str(directory) + os.pathsep + env["PATH"]


def write_connection(flwr_home: Path, link: SuperLink) -> None:
    """The `flwr` CLI's connection to `link` (TLS with its CA, or insecure)."""
    security = (f'root-certificates = "{link.ca_cert}"\n' if link.ca_cert
                else "insecure = true\n")
    flwr_home.mkdir(parents=True, exist_ok=True)
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n'
        f'[superlink.{CONNECTION}]\naddress = "{link.address}"\n{security}')


@dataclass
class SuperLink:
    started: Started
    http_port: int
    fleet_port: int
    ca_cert: Path | None = None  # set when the SuperLink serves TLS

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    def healthy(self) -> bool:
        if self.started.process.poll() is not None:
            raise RuntimeError(f"the SuperLink exited with code {self.started.process.poll()}:\n"
                               + self.started.log_tail())
        scheme = "https" if self.ca_cert else "http"
        context = ssl.create_default_context(cafile=str(self.ca_cert)) if self.ca_cert else None
        try:
            with urllib.request.urlopen(f"{scheme}://{self.address}/health", timeout=0.5,
                                        context=context) as resp:
                return resp.status == 200
        except OSError:
            return False


def start_superlink(group: ProcessGroup, env: dict[str, str], *, simulation: bool,
                    tls: TlsFiles | None = None, extra: tuple[str, ...] = (),
                    fleet_host: str = "127.0.0.1", rings: bool = False) -> SuperLink:
    """Start a SuperLink on free ports and wait until it answers /health; its control API is
    on loopback, its Fleet API (what SuperNodes reach) on `fleet_host`. `rings`: it rings
    doorbells when it stores messages (`superlink_main`)."""
    http_port, fleet_port = free_port(), free_port()
    program = ([sys.executable, "-m", SUPERLINK_ENTRY, "--"] if rings
               else [flower_command("flower-superlink")])
    command = [*program,
               *(tls.superlink_args() if tls else ["--insecure"]),
               "--host", "127.0.0.1", "--port", str(http_port),
               "--disable-runtime-dependency-installation", *extra]
    if simulation:
        command += ["--simulation", "--isolation", "subprocess"]
    else:
        command += ["--fleet-api-type", "grpc-rere",
                    "--fleet-api-address", f"{fleet_host}:{fleet_port}"]
    link = SuperLink(group.start("superlink", command, env), http_port, fleet_port,
                     tls.ca_cert if tls else None)
    wait_until(link.healthy, timeout=60, what="the SuperLink's /health")
    return link


def format_run_config(overrides: dict[str, object]) -> str:
    """Overrides in Flower's `--run-config` syntax (TOML values)."""
    def value(v: object) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v)
        return repr(v)
    return " ".join(f'"{k}"={value(v)}' if "." in k else f"{k}={value(v)}"
                    for k, v in overrides.items())


def submit_run(group: ProcessGroup, env: dict[str, str], app_dir: Path,
               run_config: dict[str, object], federation_config: str = "") -> int:
    """`flwr run APP fedsqueeze --run-config ...`; returns the run id."""
    command = [flower_command("flwr"), "run", str(app_dir), CONNECTION, "--format", "json",
               "--run-config", format_run_config(run_config)]
    if federation_config:
        command += ["--federation-config", federation_config]
    done = group.run(command, env, timeout=300)
    try:
        answer = json.loads(done.stdout)
        return int(answer["run-id"])
    except (ValueError, KeyError, TypeError):
        raise RuntimeError("flwr run did not submit the run:\n"
                           + (done.stdout + done.stderr).strip()[-3000:]) from None


def stream_logs(group: ProcessGroup, env: dict[str, str], run_id: int, log_path: Path,
                echo: bool, give_up: Callable[[], bool] | None = None) -> None:
    """Follow the run's logs (`flwr log --stream`) until it ends, into a file and the console;
    or until `give_up()` says the run cannot end well (checked every second)."""
    command = [flower_command("flwr"), "log", str(run_id), CONNECTION, "--stream"]
    with open(log_path, "w", encoding="utf-8") as log_file:
        proc = subprocess.Popen(command, env=group.env(env), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL,
                                preexec_fn=CHILD_SETUP)  # an orphaned log stream would keep
                                                         # the SuperLink from shutting down
        assert proc.stdout is not None
        if give_up is not None:
            def watch() -> None:
                while proc.poll() is None:
                    if give_up():
                        proc.terminate()
                        return
                    time.sleep(1.0)
            threading.Thread(target=watch, daemon=True).start()
        for line in proc.stdout:
            log_file.write(line)
            log_file.flush()
            if echo:
                sys.stdout.write(line)
                sys.stdout.flush()
        proc.wait()


def run_status(group: ProcessGroup, env: dict[str, str], run_id: int) -> dict:
    """Flower's record of the run (`status`, `status-details`, `network-traffic`, ...)."""
    command = [flower_command("flwr"), "ls", CONNECTION, "--run-id", str(run_id),
               "--format", "json"]
    done = group.run(command, env, timeout=120)
    try:
        runs = json.loads(done.stdout)["runs"]
        return next(r for r in runs if int(r["run-id"]) == run_id)
    except (ValueError, KeyError, StopIteration, TypeError):
        raise RuntimeError("flwr ls gave no status for run "
                           f"{run_id}:\n{(done.stdout + done.stderr).strip()[-3000:]}") from None


def _option(cmd: list[str], name: str) -> str | None:
    return cmd[cmd.index(name) + 1] if name in cmd[:-1] else None


def local_superlinks(http_port: int | None = None) -> list[psutil.Process]:
    """The detached simulation SuperLink(s) that `flwr run` starts for `:local:` connections."""
    port = str(http_port or os.environ.get("FLWR_LOCAL_SUPERLINK_HTTP_API_PORT", "39091"))
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        is_superlink = any(part.endswith("flower-superlink") for part in cmd[:2])
        if is_superlink and "--simulation" in cmd and _option(cmd, "--port") == port:
            found.append(proc)
    return found


def stop_local_superlink(http_port: int | None = None) -> int:
    """Stop Flower's detached local SuperLink and everything it started; returns the count."""
    return stop_tree(local_superlinks(http_port))


APP_PROCESSES = (*PROCESS_NAMES["serverapp"], "flwr-simulation")


class AppWatch:
    """Whether the SuperLink's app process (the ServerApp, or the simulation) died without the
    run ending: Flower notices only after its task-heartbeat patience (60 s), the launcher
    after `grace` seconds."""

    def __init__(self, link: SuperLink, grace: float = 5.0) -> None:
        self.link, self.grace = link, grace
        self.seen = False
        self.gone_since: float | None = None

    def _running(self) -> bool:
        try:
            children = psutil.Process(self.link.started.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return False
        for child in children:
            try:
                if any(any(part.endswith(name) for name in APP_PROCESSES)
                       for part in child.cmdline()[:3]):  # [python, -m, module]
                    return True
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                pass
        return False

    def __call__(self) -> bool:
        if self._running():
            self.seen, self.gone_since = True, None
            return False
        if not self.seen:
            return False
        self.gone_since = self.gone_since or time.monotonic()
        return time.monotonic() - self.gone_since > self.grace
