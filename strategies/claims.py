"""A method's paper claim: the paper's headline, its setting, and how to check it against the
runs of one comparison (`fedsqueeze compare` writes every registered method's claim beside
what its runs measured, in claims.md).

A method declares its claim as the class attribute `paper_claim`; the check reads the runs
through `Runs`, which the comparison (server/claims.py) implements, so a method never
imports the server.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


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


@dataclass(frozen=True)
class PaperClaim:
    paper: str
    claim: str
    setting: str    # the paper's setting, beside ours
    runs: str       # the runs the check needs, as the comparison labels them ("feddst-*")
    check: Callable[[Runs], Measured | None]  # None: those runs are not in the comparison


def mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.2f}"


def acc(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"
