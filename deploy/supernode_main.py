"""`flower-supernode` with Flower's hard-coded waits shortened (flower_internals.py).

    python -m fedsqueeze.deploy.supernode_main [--fallback] [--poll-cap S] -- FLOWER ARGS...

Everything after `--` goes to Flower's own `flower-supernode` entry point unchanged.
`--poll-cap`: the longest idle poll (seconds; the polls back off to it while no message
comes); `--fallback`: if Flower's internals changed, warn and keep its stock waits.
"""

from __future__ import annotations

import sys

from .flower_internals import Waits, apply_waits


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    ours, flower_args = (args[:args.index("--")], args[args.index("--") + 1:]) \
        if "--" in args else ([], args)
    cap = float(ours[ours.index("--poll-cap") + 1]) if "--poll-cap" in ours else Waits().poll_cap
    apply_waits(Waits(poll_cap=cap), supernode=True, fallback="--fallback" in ours)
    from flwr.supernode.cli import flower_supernode

    sys.argv = ["flower-supernode", *flower_args]
    flower_supernode()


if __name__ == "__main__":
    main()
