"""`flower-supernode` with Flower's hard-coded waits shortened (flower_internals.py).

    python -m fedsqueeze.deploy.supernode_main [--fallback] -- FLOWER-SUPERNODE ARGS...

Everything after `--` goes to Flower's own `flower-supernode` entry point unchanged.
"""

from __future__ import annotations

import sys

from .flower_internals import Waits, apply_waits


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    fallback = "--fallback" in args[: args.index("--")] if "--" in args else False
    flower_args = args[args.index("--") + 1:] if "--" in args else args
    apply_waits(Waits(), supernode=True, fallback=fallback)
    from flwr.supernode.cli import flower_supernode

    sys.argv = ["flower-supernode", *flower_args]
    flower_supernode()


if __name__ == "__main__":
    main()
