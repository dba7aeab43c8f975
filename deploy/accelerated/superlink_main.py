"""`flower-superlink` that rings doorbells when it stores a message (flower_internals.py).

    python -m fedsqueeze.deploy.accelerated.superlink_main [--fallback] -- FLOWER ARGS...

Everything after `--` goes to Flower's own `flower-superlink` entry point unchanged. A stored
instruction rings its SuperNode's doorbell, a stored reply the ServerApp's, so neither has to
poll fast to pick them up soon. The Control API's middlewares run for Control-API requests
only (`flower_internals.ControlOnly`), the protobuf and error translation of runtime requests
without Starlette's per-request streams (`RuntimeUnary`), and SuperNodes may send their node-auth
metadata in one compact header instead of Flower's three (compact node auth). `--fallback`: where
Flower's internals changed, warn and keep Flower's own behaviour for that part (without rings,
the others poll as with a stock SuperLink).
"""

from __future__ import annotations

import sys

from ..launch.processes import import_and_freeze
from .flower_internals import (
    FlowerInternalsError,
    check_version,
    part_on,
    patch_compact_auth_server,
    patch_superlink_control_middleware,
    patch_superlink_rings,
)


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    ours, flower_args = (args[:args.index("--")], args[args.index("--") + 1:]) \
        if "--" in args else ([], args)
    patches = (("doorbells", patch_superlink_rings, "rings no doorbells"),
               ("control-only", patch_superlink_control_middleware,
                "runs Flower's whole middleware stack on every request"),
               ("compact-auth", patch_compact_auth_server,
                "needs Flower's node-auth headers in every call"))
    for part, patch, without in patches:
        if not part_on(part):
            continue
        try:
            check_version()
            patch()
        except FlowerInternalsError as err:
            if "--fallback" not in ours:
                raise
            print(f"fedsqueeze: WARNING: the SuperLink {without}: {err}", file=sys.stderr)
    import_and_freeze("flwr.superlink.cli")
    from flwr.superlink.cli import flower_superlink

    sys.argv = ["flower-superlink", *flower_args]
    flower_superlink()


if __name__ == "__main__":
    main()
