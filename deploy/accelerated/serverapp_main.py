"""`flwr-serverapp` with Flower's object-pull back-off and its grid's reply poll shortened
(flower_internals.py).

    python -m fedsqueeze.deploy.accelerated.serverapp_main FLOWER ARGS...

The launcher puts a `flwr-serverapp` that runs this module first on the SuperLink's PATH (its
SuperExec starts the ServerApp by that bare name). Why: the ServerApp pulls a reply as soon as
its message is stored, often before the node has uploaded the reply's arrays; Flower then
waits 1 s (doubling) before pulling them again, which held up most rounds by about a second
(measured: single-reply pulls of 0.96-1.24 s on a 10-SuperNode fc2 round). And a ServerApp
that is not fedsqueeze's waits for replies in Flower's `HttpGrid.send_and_receive`, 3 s
between pulls; here it wakes on the run's doorbell when a reply is stored.
"""

from __future__ import annotations

import sys

from ..launch.processes import import_and_freeze
from .flower_internals import Waits, apply_waits


def main(argv: list[str] | None = None) -> None:
    apply_waits(Waits(), supernode=False, serverapp=True)
    import_and_freeze("flwr.superlink.cli", "fedsqueeze.server.app")
    from flwr.superlink.cli import flwr_serverapp

    sys.argv = ["flwr-serverapp", *(sys.argv[1:] if argv is None else argv)]
    flwr_serverapp()


if __name__ == "__main__":
    main()
