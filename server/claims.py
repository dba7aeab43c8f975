"""The papers' claims beside what a comparison's runs measured (claims.md of `fedsqueeze
compare`): every claim a method module declares with `@paper_claim`, checked against the runs
through `Comparison`; a claim whose runs are not in the comparison says which it lacks."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from fedsqueeze.strategies.claims import CLAIMS, PaperClaim
from fedsqueeze.strategies.registry import method_names

from .compare import CompareRow, reached


@dataclasses.dataclass
class Claim:
    paper: str
    claim: str
    setting: str
    ours: str
    verdict: str


class Comparison:
    """One comparison's runs as a claim reads them (`fedsqueeze.strategies.claims.Runs`)."""

    def __init__(self, results: Sequence[tuple[str, dict[str, Any], list[dict[str, Any]]]],
                 rows: list[CompareRow]) -> None:
        self._rounds = {label: run_rows for label, _, run_rows in results}
        self._rows = {row.label: row for row in rows}
        self.reference = rows[0].label

    def labels(self, prefix: str) -> list[str]:
        return [label for label in self._rows if label.startswith(prefix)]

    def rounds(self, label: str) -> int:
        return self._rows[label].rounds

    def final_accuracy(self, label: str) -> float | None:
        return self._rows[label].final_accuracy

    def message_total(self, label: str) -> int:
        return self._rows[label].message_total

    def message_up(self, label: str) -> list[int]:
        return [row["message_up"] for row in self._rounds[label]]

    def ratio_to_target(self, label: str) -> float | None:
        return self._rows[label].ratios[0]

    def upload_to(self, label: str, accuracy: float) -> int | None:
        return reached(self._rounds[label], accuracy).upload_bytes

    def accuracy_within_upload(self, label: str, cap: int) -> float | None:
        spent, best = 0, None
        for row in self._rounds[label]:
            spent += row["message_up"]
            if spent > cap:
                break
            if row["accuracy"] is not None:
                best = row["accuracy"]
        return best


def registered_claims() -> list[PaperClaim]:
    """The claims every method module declares, by paper."""
    method_names()  # imports every method module: each declares its claim as it is imported
    return [CLAIMS[paper] for paper in sorted(CLAIMS)]


def paper_claims(results: Sequence[tuple[str, dict[str, Any], list[dict[str, Any]]]],
                 rows: list[CompareRow]) -> list[Claim]:
    """Each registered method's claim next to what these runs measured (from rounds.jsonl)."""
    runs = Comparison(results, rows)
    claims = []
    for claim in registered_claims():
        measured = claim.measure(runs)
        claims.append(Claim(claim.paper, claim.claim, claim.setting, measured.ours,
                            measured.verdict))
    return claims


def claims_markdown(claims: list[Claim], title: str) -> str:
    lines = [title, "", "| paper | claim | paper's setting | measured here | verdict |",
             "|---|---|---|---|---|"]
    lines += [f"| {c.paper} | {c.claim} | {c.setting} | {c.ours} | {c.verdict} |"
              for c in claims]
    return "\n".join(lines) + "\n"
