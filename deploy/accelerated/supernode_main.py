"""`flower-supernode` with Flower's hard-coded waits shortened and doorbells (flower_internals.py).

The same call (`apply_waits`) also makes the SuperNode's self-made key pair P-256 and serves
its runtime API's unary requests without Starlette's per-request streams (`RuntimeUnary`).

    python -m fedsqueeze.deploy.accelerated.supernode_main [--fallback] [--poll-cap S]
        [--executor-bell KEY] -- FLOWER ARGS...

Everything after `--` goes to Flower's own `flower-supernode` entry point unchanged.
`--poll-cap`: the longest idle poll (seconds; the polls back off to it while no message
comes and no doorbell can wake the node); `--executor-bell`: the key of the doorbell
(`exec/KEY`) its SuperExec waits on, rung when a task for a ClientApp is created;
`--fallback`: if Flower's internals changed, warn and keep its stock waits.
"""

from __future__ import annotations

import argparse
import sys

from fedsqueeze.server.doorbell import bell_name

from ..launch.processes import import_and_freeze
from .flower_internals import Waits, apply_waits


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    ours, flower_args = (args[:args.index("--")], args[args.index("--") + 1:]) \
        if "--" in args else ([], args)
    parser = argparse.ArgumentParser(prog="python -m fedsqueeze.deploy.accelerated.supernode_main")
    parser.add_argument("--poll-cap", type=float, default=Waits().poll_cap)
    parser.add_argument("--executor-bell")
    parser.add_argument("--fallback", action="store_true")
    options = parser.parse_args(ours)
    executor_bell = bell_name("exec", options.executor_bell) if options.executor_bell else None
    apply_waits(Waits(poll_cap=options.poll_cap), supernode=True, fallback=options.fallback,
                executor_bell=executor_bell)
    import_and_freeze("flwr.supernode.cli")
    from flwr.supernode.cli import flower_supernode

    sys.argv = ["flower-supernode", *flower_args]
    flower_supernode()


if __name__ == "__main__":
    main()
