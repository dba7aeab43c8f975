"""ResFed (Song et al., arXiv 2212.05602): FedAvg whose model travels both ways as residuals
against predictors both ends share, per client: the `residual` channel
(`strategies/channels/residual.py`, keys `residual.*`), this method's default both ways.

The method is Flower's FedAvg over the models the server reconstructs (L^); every other plain
method runs with the same residuals with `uplink = downlink = "residual"` (FedAvgM, FedAdam,
FedPara's layers, ...).
"""

from __future__ import annotations

from flwr.serverapp.strategy import FedAvg
from torch import nn

from fedsqueeze.strategies.base import Method, Tagged
from fedsqueeze.strategies.claims import Measured, Runs, mb, paper_claim
from fedsqueeze.strategies.registry import register


class ResFedStrategy(Tagged, FedAvg):
    method_name = "resfed"


@paper_claim("ResFed", ">700x per round; to 70% accuracy 587.61 -> 6.79 Mb up per client",
             setting="CIFAR-10 CNN (1,020,160 params), 10 clients non-IID,"
                     " s = 0.995 under a formula",
             needs=("resfed",))
def _fewer_upload_bytes(runs: Runs, ours: list[str]) -> Measured:
    """The best round's upload against FedAvg's, and the upload to 70% accuracy."""
    label = next((run for run in ours if run.startswith("resfed-0.99")), ours[0])
    ref = runs.reference
    per_round = max(a / b for a, b in zip(runs.message_up(ref), runs.message_up(label)) if b)
    to70 = [runs.upload_to(run, 0.70) for run in (ref, label)]
    seventy = (f"to 70%: {mb(to70[0])} -> {mb(to70[1])} MB up" if None not in to70
               else "70% not reached by both")
    return Measured(f"{label}: up to x{per_round:.0f} fewer upload bytes in a round; {seventy}",
                    "holds" if per_round >= 700 else "does not hold (per round)")


@register("resfed")
class ResFed(Method):
    plain = True

    def default_channel(self) -> str:
        return "residual"

    def strategy(self, model: nn.Module, **options) -> ResFedStrategy:
        return ResFedStrategy(**options)
