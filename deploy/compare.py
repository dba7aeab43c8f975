"""`fedsqueeze compare PRESET`: every method on the same work, side by side, in real bytes.

A preset is one setting (dataset, model, split, clients, rounds, local work) and a list of
runs, each a label and the run-config keys that make it (method, its keys, a model
transform). Every run goes to `<out>/runs/<label>/` (a normal results directory); a run whose
directory already holds a completed run of the same keys and rounds is reused, not run
again, so an interrupted comparison picks up where it stopped. A run being written holds
`<out>/runs/<label>.lock`: comparisons started side by side on one folder (`--only` halves,
one per core) never write the same run; one that needs a run another is writing waits for
it and reuses it. Then the table
(`server/compare.py`: bytes to FedAvg's final accuracy minus 1, 3 and 5 points) goes to
`<out>/table.md` and `table.csv`, with `accuracy_vs_bytes.png` and `bytes_to_target.png`,
and `claims.md`: each claim a method module declares (`@paper_claim`) beside what these
runs measured.

Engines: `simulation` (default): the ServerApp round loop and the ClientApp in this process,
every message serialized as on the wire (`deploy/inprocess.py`; the same accuracies as
Flower's Ray engine, `bench/engines_agree.py`); `ray`: Flower's simulation engine
(`fedsqueeze simulate`); `deployment`: SuperLink + SuperNodes over gRPC (`fedsqueeze
deploy`), which adds the wire bytes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from fedsqueeze.server import claims
from fedsqueeze.server import compare as table
from fedsqueeze.server.loop import RunFailure
from fedsqueeze.server.results import read_run
from fedsqueeze.strategies.settings import ConfigError, UserValue

from .config_check import checked_run_config, find_app_dir
from .inprocess import Federation
from .launch.flower import require_grpc_flower

ENGINES = ("simulation", "ray", "deployment")


@dataclasses.dataclass(frozen=True)
class Preset:
    name: str
    description: str
    clients: int
    rounds: int
    setting: dict[str, UserValue]
    runs: tuple[tuple[str, dict[str, UserValue]], ...]  # (label, keys); the first = reference

    def labels(self) -> list[str]:
        return [label for label, _ in self.runs]


def _lossy_runs(gwpf_steps: int) -> tuple[tuple[str, dict[str, UserValue]], ...]:
    """Every registered method (two settings of each lossy one), the channels users pick
    instead (top-k EF, QSGD; also both ways) under FedAvg, and compositions: FedPara layers
    under channels and ResFed, Flower's server optimizers and robust aggregation under
    channels, FedDST with 8-bit values; `gwpf_steps` = GWPF's local steps, one epoch of a
    client."""
    fedpara = {"method": "fedpara", "fedpara.gamma": 0.3}
    topk_both = {"uplink": "topk-ef", "downlink": "topk-ef"}
    qsgd_both = {"uplink": "qsgd", "downlink": "qsgd"}
    return (
        ("fedavg", {"method": "fedavg"}),
        ("fedavg-fp16", {"method": "fedavg", "dense.dtype": "fp16"}),
        ("fedavgm", {"method": "fedavgm"}),
        ("normclip", {"method": "normclip"}),
        ("fedsparsify-global-0.9", {"method": "fedsparsify"}),
        ("fedsparsify-local-0.9", {"method": "fedsparsify", "fedsparsify.variant": "local"}),
        ("resfed-0.95", {"method": "resfed"}),
        ("resfed-0.99", {"method": "resfed", "residual.sparsity-up": 0.99,
                         "residual.sparsity-down": 0.99}),
        ("topk-ef-0.99", {"method": "fedavg", "uplink": "topk-ef"}),
        ("topk-ef-0.999-fp16", {"method": "fedavg", "uplink": "topk-ef",
                                "topk-ef.sparsity": 0.999, "topk-ef.values": "fp16"}),
        ("topk-ef-0.99-both", {"method": "fedavg", **topk_both}),
        ("qsgd-4bit", {"method": "fedavg", "uplink": "qsgd"}),
        ("qsgd-2bit-ef", {"method": "fedavg", "uplink": "qsgd", "qsgd.bits": 2,
                          "qsgd.error-feedback": True}),
        ("qsgd-4bit-both", {"method": "fedavg", **qsgd_both}),
        ("gwpf-0.5", {"method": "gwpf", "gwpf.local-steps": gwpf_steps}),
        ("gwpf-0.9-apf", {"method": "gwpf", "gwpf.local-steps": gwpf_steps,
                          "gwpf.tau-freeze": 0.9, "gwpf.thaw-quorum": 10,
                          "gwpf.tau-thaw": 0.99, "gwpf.alpha": 0.9, "gwpf.unfreeze": "apf"}),
        ("feddst-0.8", {"method": "feddst"}),
        ("feddst-0.9", {"method": "feddst", "feddst.sparsity": 0.9}),
        ("fedpara-0.1", {"method": "fedpara", "fedpara.gamma": 0.1}),
        ("fedpara-0.3", {"method": "fedpara", "fedpara.gamma": 0.3}),
        ("pfedpara-0.5", {"method": "pfedpara"}),  # central acc: the global factors, init W2
        ("fedpara x resfed-0.95", {"method": "resfed", "model-transform": "fedpara",
                                   "fedpara.gamma": 0.3}),
        ("fedpara x topk-ef-0.99-both", {**fedpara, **topk_both}),
        ("fedpara x topk-ef-0.99-fp16-both", {**fedpara, **topk_both,
                                              "topk-ef.values": "fp16"}),
        ("fedpara x topk-ef-0.99-q8-both", {**fedpara, **topk_both, "topk-ef.values": "q8"}),
        ("fedpara x qsgd-4bit-both", {**fedpara, **qsgd_both}),
        ("fedavgm x topk-ef-0.99-both", {"method": "fedavgm", **topk_both}),
        ("fedadam x qsgd-4bit-both", {"method": "fedadam", **qsgd_both}),
        ("fedtrimmedavg x topk-ef-0.99", {"method": "fedtrimmedavg", "uplink": "topk-ef"}),
        ("feddst-0.8 x q8", {"method": "feddst", "feddst.values": "q8"}),
    )


def _sampled_runs(gwpf_steps: int) -> tuple[tuple[str, dict[str, UserValue]], ...]:
    """`_lossy_runs` and, for every row whose downlink is a compressing channel, its twin
    without catch-up (`catchup-rounds = 0`: a client that missed a round gets the full
    model), so the table shows what catch-up saves where clients miss rounds."""
    runs = _lossy_runs(gwpf_steps)
    twins = tuple((f"{label} (no catch-up)", {**keys, "catchup-rounds": 0})
                  for label, keys in runs if keys.get("downlink") not in (None, "dense"))
    return runs + twins


# Settings `fedsqueeze tune` chose on the clients' held-out local splits (never the test set):
# `fedsqueeze tune fmnist-fc2-xdevice --row "fedavgm x topk-ef-0.99-both" --grid
# fedavgm.server-momentum=0.3,0.6,0.9 --rounds 60` chose 0.6 (held-out accuracy 0.633; 0.9, the
# default: 0.585), and `--row "fedadam x qsgd-4bit-both" --grid fedadam.eta=0.003,0.01,0.03`
# chose 0.003 (0.561; 0.01, the default: 0.426).
XDEVICE_TUNED: tuple[tuple[str, dict[str, UserValue]], ...] = (
    ("fedavgm x topk-ef-0.99-both (tuned: momentum 0.6)",
     {"method": "fedavgm", "uplink": "topk-ef", "downlink": "topk-ef",
      "fedavgm.server-momentum": 0.6}),
    ("fedadam x qsgd-4bit-both (tuned: eta 0.003)",
     {"method": "fedadam", "uplink": "qsgd", "downlink": "qsgd", "fedadam.eta": 0.003}),
)

FC2_SETTING: dict[str, UserValue] = {
    "dataset": "fashion-mnist", "model": "fc2", "partitioner": "pathological",
    "partition-classes": 2, "class-assignment": "deterministic", "local-epochs": 1,
    "batch-size": 32, "lr": 0.02, "min-nodes": 2}

PRESETS = {p.name: p for p in (
    Preset("fmnist-fc2",
           "FashionMNIST, 10 clients with 2 classes each (deterministic), fc2, E = 1, batch "
           "32, lr 0.02, 200 rounds",
           clients=10, rounds=200, setting=FC2_SETTING,
           runs=_lossy_runs(gwpf_steps=188)),  # 6,000 rows / 32 = one epoch
    Preset("fmnist-fc2-partial",
           "FashionMNIST, 20 clients with 2 classes each (deterministic), half of them "
           "sampled per round, fc2, E = 1, batch 32, lr 0.02, 200 rounds",
           clients=20, rounds=200, setting={**FC2_SETTING, "fraction-train": 0.5},
           runs=_sampled_runs(gwpf_steps=94)),  # 3,000 rows / 32
    Preset("fmnist-fc2-xdevice",
           "FashionMNIST, 100 clients with 2 classes each (deterministic), 10% of them "
           "sampled per round, fc2, E = 1, batch 32, lr 0.02, 300 rounds",
           clients=100, rounds=300,  # a client's gap between rounds: mean 10, > 64: 0.1%
           setting={**FC2_SETTING, "fraction-train": 0.1, "catchup-rounds": 64},
           runs=_sampled_runs(gwpf_steps=19) + XDEVICE_TUNED),  # 600 rows / 32
    Preset("fmnist-cnn",
           "FashionMNIST, 10 clients Dirichlet(1), the GWPF spec's CNN (582,026 parameters), "
           "E = 1, batch 100, SGD lr 0.01, weight decay 0.01, 60 rounds",
           clients=10, rounds=60,
           setting={"dataset": "fashion-mnist", "model": "cnn", "partitioner": "dirichlet",
                    "dirichlet-alpha": 1.0, "local-epochs": 1, "batch-size": 100, "lr": 0.01,
                    "weight-decay": 0.01, "min-nodes": 2},
           runs=_lossy_runs(gwpf_steps=60)),  # about 6,000 rows / 100
)}


def preset_named(name: str) -> Preset:
    if name not in PRESETS:
        raise ConfigError(f"unknown compare preset {name!r}; one of {', '.join(PRESETS)}")
    return PRESETS[name]


def selected(preset: Preset, only: Sequence[str]) -> list[tuple[str, dict[str, UserValue]]]:
    """The preset's runs named in `only` (all when empty), the reference always first."""
    unknown = [label for label in only if label not in preset.labels()]
    if unknown:
        raise ConfigError(f"--only: {', '.join(unknown)} not in preset {preset.name!r}; its "
                          f"runs: {', '.join(preset.labels())}")
    return [run for i, run in enumerate(preset.runs) if i == 0 or not only or run[0] in only]


def slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", label)


def run_keys(preset: Preset, keys: dict[str, UserValue], rounds: int) -> dict[str, UserValue]:
    return {**preset.setting, **keys, "num-server-rounds": rounds}


def reusable(run_dir: Path, wanted: dict[str, UserValue], engine: str) -> str | None:
    """How `run_dir` ended ("completed" or "failed") if it holds a finished run of exactly
    these keys on this engine (runs are deterministic: a failed one would fail again; delete
    its folder to run it anew), else None."""
    if not (run_dir / "config.json").is_file():
        return None
    config, rows, summary = read_run(run_dir)
    stored = config.get("run_config", {})
    status = summary.get("status")
    finished = (status == "completed" and len(rows) == wanted["num-server-rounds"]) or \
        status == "failed"
    same = (config.get("engine", stored.get("engine")) == _engine_name(engine)
            and all(stored.get(k) == v for k, v in wanted.items()))
    return status if finished and same else None


def _engine_name(engine: str) -> str:
    return "deployment" if engine == "deployment" else "simulation"


def config_text(keys: dict[str, UserValue]) -> str:
    """Keys as one Flower `--run-config` string (TOML values)."""
    def value(v: UserValue) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        return json.dumps(v) if isinstance(v, str) else repr(v)
    return " ".join(f"{k}={value(v)}" for k, v in keys.items())


class Progress:
    """One line per run start and, at most every `every` seconds, one per round: which run,
    round i/N, accuracy, seconds per round, and the ETA of the run (from its own seconds per
    round) and of the comparison (the rest of this run, then the other runs' rounds at the
    mean of the runs' own rates so far: a slow run after a fast one is not averaged away)."""

    def __init__(self, total_rounds: int, echo: Callable[[str], None] = print,
                 every: float = 10.0, accuracy: bool = True) -> None:
        self.left, self.echo, self.every = total_rounds, echo, every
        self.accuracy = accuracy  # False: the test-set accuracy is not shown (tuning)
        self.runs: dict[str, tuple[float, int]] = {}  # label -> (seconds, rounds) so far
        self._last = 0.0

    def start(self, index: int, count: int, label: str, note: str = "") -> None:
        self.echo(f"[{index}/{count}] {label}{note}")

    def skip(self, rounds: int) -> None:
        self.left -= rounds

    def etas(self, label: str, rounds_left: int) -> tuple[float, float]:
        """(seconds left in run `label`, seconds left in the comparison)."""
        spent, done = self.runs[label]
        own = spent / done
        typical = sum(s / d for s, d in self.runs.values()) / len(self.runs)
        return own * rounds_left, own * rounds_left + typical * (self.left - rounds_left)

    def round(self, label: str, row: dict[str, Any], rounds: int, seconds: float) -> None:
        self.left -= 1
        spent, done = self.runs.get(label, (0.0, 0))
        self.runs[label] = (spent + seconds, done + 1)
        now = time.monotonic()
        if now - self._last < self.every and row["round"] < rounds:
            return
        self._last = now
        run_eta, all_eta = self.etas(label, rounds - row["round"])
        acc = row["accuracy"]
        shown = f"  accuracy {'-' if acc is None else f'{acc:.4f}'}" if self.accuracy else ""
        self.echo(f"    {label}: round {row['round']}/{rounds}{shown}  {seconds:.2f} s/round  "
                  f"ETA run {_duration(run_eta)}, all {_duration(all_eta)}")


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s"


def run_inprocess(label: str, keys: dict[str, UserValue], clients: int, run_dir: Path,
                  progress: Progress) -> None:
    started = time.monotonic()
    flwr = logging.getLogger("flwr")
    level = flwr.level
    flwr.setLevel(logging.ERROR)  # its per-round lines and set-up notes: ours replace them
    try:
        fed = Federation(keys, clients=clients, results_dir=run_dir.parent,
                         run_name=run_dir.name)
        rounds = int(keys["num-server-rounds"])
        for _ in range(rounds):
            try:
                row = fed.run_round()
            except RunFailure as err:  # the run ends here; the comparison goes on
                fed.runner.writer.finish("failed", time.monotonic() - started, str(err))
                progress.skip(rounds - fed.round + 1)
                progress.echo(f"    {label}: failed in round {fed.round}: {err}")
                return
            progress.round(label, row, rounds, row["seconds"])
        fed.runner.writer.finish("completed", time.monotonic() - started)
    finally:
        flwr.setLevel(level)


def run_launcher(engine: str, label: str, keys: dict[str, UserValue], clients: int,
                 run_dir: Path, progress: Progress) -> None:
    """`fedsqueeze simulate|deploy` in a child process, its rounds.jsonl followed."""
    command = [sys.executable, "-m", "fedsqueeze.deploy.cli",
               "simulate" if engine == "ray" else "deploy", "--clients", str(clients),
               "--quiet", "--overwrite", "--results-dir", str(run_dir.parent),
               "--run-name", run_dir.name, "--run-config", config_text(keys)]
    rounds, seen = int(keys["num-server-rounds"]), 0
    log = run_dir.parent / f"{run_dir.name}.log"
    with open(log, "w") as out:
        child = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        try:
            while child.poll() is None or seen < _row_count(run_dir):
                time.sleep(1.0)
                rows = read_run(run_dir)[1] if (run_dir / "config.json").is_file() else []
                for row in rows[seen:]:
                    progress.round(label, row, rounds, row["seconds"])
                seen = max(seen, len(rows))
        except BaseException:  # Ctrl-C or SIGTERM here: the launcher stops what it started
            child.terminate()
            child.wait()
            raise
    if child.returncode != 0:
        summary = read_run(run_dir)[2] if (run_dir / "config.json").is_file() else {}
        if summary.get("status") != "failed":  # not the run failing: the launch did
            raise RuntimeError(f"{label}: `fedsqueeze {command[3]}` exited with "
                               f"{child.returncode}; its output: {log}")
        progress.skip(rounds - _row_count(run_dir))
        progress.echo(f"    {label}: failed: {summary.get('error')}")


@contextlib.contextmanager
def run_lock(run_dir: Path, echo: Callable[[str], None]) -> Iterator[None]:
    """Hold `<run dir>.lock` (flock) while deciding on and writing one run; a comparison that
    finds it held says by whom and waits."""
    with open(run_dir.parent / f"{run_dir.name}.lock", "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            echo(f"    {run_dir.name}: being written by {holder}; waiting for it")
            fcntl.flock(lock, fcntl.LOCK_EX)
        lock.truncate(0)
        lock.write(f"pid {os.getpid()}\n")
        lock.flush()
        try:
            yield
        finally:
            lock.truncate(0)
            fcntl.flock(lock, fcntl.LOCK_UN)


def _row_count(run_dir: Path) -> int:
    path = run_dir / "rounds.jsonl"
    return sum(1 for line in path.read_text().splitlines() if line.strip()) \
        if path.exists() else 0


def compare(preset: Preset, *, engine: str = "simulation", rounds: int | None = None,
            only: Sequence[str] = (), out: Path | None = None,
            echo: Callable[[str], None] = print) -> Path:
    """Run (or reuse) the preset's runs and write the table and plots; returns the folder."""
    if engine not in ENGINES:
        raise ConfigError(f"--engine {engine!r}: one of {', '.join(ENGINES)}")
    if engine == "deployment":
        require_grpc_flower()
    rounds = rounds or preset.rounds
    if rounds < 1:
        raise ConfigError(f"--rounds {rounds}: must be >= 1")
    runs = selected(preset, only)
    app_dir = find_app_dir()
    wanted = [(label, run_keys(preset, keys, rounds)) for label, keys in runs]
    for label, keys in wanted:  # every run's keys are checked before the first one starts
        try:
            checked_run_config(app_dir, keys)
        except ConfigError as err:
            raise ConfigError(f"preset {preset.name}, run {label!r}: {err}") from None
    suffix = ("" if engine == "simulation" else f"-{engine}") + \
        ("" if rounds == preset.rounds else f"-r{rounds}")
    out = Path(out or Path("compare") / f"{preset.name}{suffix}").resolve()
    (out / "runs").mkdir(parents=True, exist_ok=True)
    echo(f"compare {preset.name}: {preset.description}; {rounds} rounds, {len(runs)} runs, "
         f"engine {engine} -> {out}")
    progress = Progress(rounds * len(runs), echo)
    for index, (label, keys) in enumerate(wanted, start=1):
        run_dir = out / "runs" / slug(label)
        with run_lock(run_dir, echo):
            ended = reusable(run_dir, keys, engine)
            if ended:
                progress.start(index, len(runs), label, f" ({ended} earlier: reused)")
                progress.skip(rounds)
                continue
            progress.start(index, len(runs), label,
                           f": {table.keys_text(dict(runs[index - 1][1]))}")
            if engine == "simulation":
                run_inprocess(label, keys, preset.clients, run_dir, progress)
            else:
                run_launcher(engine, label, keys, preset.clients, run_dir, progress)
    finished = {label: read_run(out / "runs" / slug(label)) for label, _ in runs}
    results = [(label, dict(keys), finished[label][1]) for label, keys in runs]
    rows = table.compare_rows(results)
    for row in rows:
        summary = finished[row.label][2]
        if summary.get("status") != "completed":
            row.status = f"{summary.get('status')} after round {row.rounds}"
    title = (f"fedsqueeze compare {preset.name} ({engine}): {preset.description}"
             + ("" if rounds == preset.rounds else f" (here {rounds} rounds)"))
    (out / "table.md").write_text(table.markdown(rows, title))
    table.write_csv(rows, out / "table.csv")
    table.plot([(label, r) for label, _, r in results], rows, out)
    (out / "claims.md").write_text(claims.claims_markdown(
        claims.paper_claims(results, rows),
        f"Paper claims beside this comparison ({preset.name}, {engine}, {rounds} rounds; the "
        "settings differ: see each row)"))
    echo((out / "table.md").read_text())
    echo((out / "claims.md").read_text())
    echo(f"written: {out / 'table.md'}, table.csv, claims.md, accuracy_vs_bytes.png, "
         "bytes_to_target.png")
    return out
