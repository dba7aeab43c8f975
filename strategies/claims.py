"""A method's paper claim: the paper's headline, its setting, and how to check it against the
runs of one comparison (`fedsqueeze compare` writes every declared claim beside what its
runs measured, in claims.md).

A method's module declares its claim by decorating the function that checks it,
`@paper_claim(paper, claim, setting=, needs=)`; the check reads the runs through `Runs`, which
the comparison (server/claims.py) implements, so a method never imports the server.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from .settings import register_in


class Runs(Protocol):
    """The runs of one comparison, by label; the reference run (FedAvg) is `reference`."""

    reference: str

    def labels(self, prefix: str) -> list[str]:
        """The labels that start with `prefix`, in the comparison's order."""

    def rounds(self, label: str) -> int: ...

    def final_accuracy(self, label: str) -> float | None: ...

    def message_total(self, label: str) -> int:
        """Message-layer bytes, up + down, over the whole run."""

    def message_up(self, label: str) -> list[int]:
        """Message-layer upload bytes of each round."""

    def ratio_to_target(self, label: str) -> float | None:
        """The reference's bytes to the first target accuracy (its final - 1 point) over this
        run's (None: never reached)."""

    def upload_to(self, label: str, accuracy: float) -> int | None:
        """Upload bytes until the first evaluated round at or above `accuracy`."""

    def accuracy_within_upload(self, label: str, cap: int) -> float | None:
        """The last evaluated accuracy while the cumulative upload is at most `cap`."""


@dataclass(frozen=True)
class Measured:
    """What the runs showed (`ours`) and whether the claim holds here (`verdict`)."""

    ours: str
    verdict: str


Check = Callable[..., Measured]


@dataclass(frozen=True)
class PaperClaim:
    paper: str
    claim: str
    setting: str              # the paper's setting, beside ours
    needs: tuple[str, ...]    # label prefixes: the runs the check needs ("feddst", "fedavgm")
    check: Check              # check(runs, labels of each prefix in `needs`)

    def measure(self, runs: Runs) -> Measured:
        """What `runs` show of this claim, or which of the runs it needs they lack."""
        found = [runs.labels(prefix) for prefix in self.needs]
        missing = [f"{prefix}*" for prefix, labels in zip(self.needs, found) if not labels]
        if missing:
            return Measured("-", f"not measured: no {' or '.join(missing)} run in this "
                                 "comparison")
        return self.check(runs, *found)


CLAIMS: dict[str, PaperClaim] = {}  # by paper, filled as the method modules are imported


def paper_claim(paper: str, claim: str, *, setting: str, needs: tuple[str, ...]
                ) -> Callable[[Check], Check]:
    """Decorator: the function it decorates checks `claim` of `paper` (whose `setting` is
    beside ours) against the runs whose labels start with each prefix of `needs`; it is
    called with the runs and, per prefix, its labels (never empty). A paper claimed twice
    is an error."""
    def declare(check: Check) -> Check:
        register_in(CLAIMS, "paper claim of", paper)(PaperClaim(paper, claim, setting, needs,
                                                                check))
        return check
    return declare


def mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.2f}"


def acc(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"
