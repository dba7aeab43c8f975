"""FedPara (Hyeon-Woo et al., ICLR 2022): FedAvg over the factors of low-rank Hadamard layers.

The model changes, not the protocol: the method requires `model-transform = "fedpara"`
(`strategies/model_transform.py`, options `fedpara.gamma`, `fedpara.layers`, `fedpara.tanh`)
and is otherwise Flower's FedAvg, the factors travelling as the run's channels code them.
Every other method trains the same layers with `model-transform = "fedpara"` in run config.
"""

from __future__ import annotations

from flwr.serverapp.strategy import FedAvg
from torch import nn

from fedsqueeze.strategies.base import Method, Tagged
from fedsqueeze.strategies.claims import Measured, Runs, paper_claim
from fedsqueeze.strategies.model_transform import FedParaConfig
from fedsqueeze.strategies.registry import register


class FedParaStrategy(Tagged, FedAvg):
    method_name = "fedpara"


@paper_claim("FedPara", "2.8-10.1x less communication at comparable accuracy",
             setting="VGG16-GN, CIFAR-10, 100 clients Dirichlet(0.5), 200 rounds, gamma 0.1",
             needs=("fedpara-",))
def _fewer_bytes_to_target(runs: Runs, ours: list[str]) -> Measured:
    """The best FedPara run's bytes to FedAvg's final accuracy - 1 point, against FedAvg's."""
    label = max(ours, key=lambda run: runs.ratio_to_target(run) or 0)
    ratio = runs.ratio_to_target(label)
    return Measured(f"{label}: " + ("never reached FedAvg's final accuracy - 1 point"
                                    if ratio is None else
                                    f"x{ratio:.1f} fewer bytes to FedAvg's final accuracy - 1 "
                                    "point"),
                    "holds" if ratio and ratio >= 2.8 else "does not hold")


@register("fedpara")
class FedPara(Method):
    Config = FedParaConfig
    model_transform = "fedpara"
    plain = True

    def strategy(self, model: nn.Module, **options) -> FedParaStrategy:
        return FedParaStrategy(**options)
