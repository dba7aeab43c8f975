"""FedPara's low-rank Hadamard layers (Hyeon-Woo et al., ICLR 2022) and the model transform
that puts them into any model.

Linear, W in R^{m x n}: W = (X1 Y1^T) * (X2 Y2^T), X_i in R^{m x R}, Y_i in R^{n x R}
(2R(m + n) parameters, rank(W) <= R^2). Conv, W in R^{O x I x k x k}: W_i[o, c] =
sum_{a,b} T_i[a, b] O_i[a, o] I_i[b, c], W = W_1 * W_2 (2(R^2 k^2 + R(O + I)) parameters).
`tanh` uses tanh(W_1) * tanh(W_2). The personalised form (pFedPara) is W = W_1 * (W_2 + 1),
with W_1's factors global and W_2's local (`LOCAL_FACTORS` names them). W is synthesised in
every forward pass: the state dict holds the factors (and the bias), never W.

Ranks from gamma (the rule that reproduces the paper's model sizes): R = ceil((1 - gamma)
r_min + gamma r_max); linear r_min = min(ceil(sqrt m), ceil(sqrt n)), r_max = floor(m n /
(2 (m + n))); conv r_min = min(ceil(sqrt O), ceil(sqrt I)), r_max = floor of the positive
root of k^2 R^2 + (O + I) R - O I k^2 / 2 = 0.

Initialisation: every factor entry ~ N(0, s^2), s chosen so that Var(W) is He (Kaiming
normal, ReLU gain) init's 2 / fan_in of the original layer: Var(W_i) = R s^4 (linear) or
R^2 s^6 (conv); FedPara: Var(W) = Var(W_1) Var(W_2) with Var(W_1) = Var(W_2) = sqrt(target);
pFedPara: Var(W) = Var(W_1) (Var(W_2) + 1) with Var(W_2) = sqrt(target). Biases keep
PyTorch's default init.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LOCAL_FACTORS = ("x2", "y2", "t2", "o2", "i2")  # pFedPara: W_2's factors (never sent)
LAYER_CHOICES = ("auto", "conv", "linear", "all")


def linear_rank(m: int, n: int, gamma: float) -> int:
    r_min = min(math.ceil(math.sqrt(m)), math.ceil(math.sqrt(n)))
    r_max = math.floor(m * n / (2 * (m + n)))
    return max(1, math.ceil((1 - gamma) * r_min + gamma * r_max - 1e-9))


def conv_rank(out_channels: int, in_channels: int, k: int, gamma: float) -> int:
    r_min = min(math.ceil(math.sqrt(out_channels)), math.ceil(math.sqrt(in_channels)))
    a, b, c = k * k, out_channels + in_channels, -out_channels * in_channels * k * k / 2
    r_max = math.floor((-b + math.sqrt(b * b - 4 * a * c)) / (2 * a))
    return max(1, math.ceil((1 - gamma) * r_min + gamma * r_max - 1e-9))


def _factor_std(target_var: float, rank: int, personal: bool, conv: bool) -> tuple[float, float]:
    """Std of W_1's and W_2's factor entries for Var(W) = target_var (see module docstring)."""
    per_factor = (lambda v: (v / rank ** 2) ** (1 / 6)) if conv else (
        lambda v: (v / rank) ** 0.25)
    if not personal:
        v = math.sqrt(target_var)                 # Var(W_1) = Var(W_2) = sqrt(target)
        return per_factor(v), per_factor(v)
    v2 = math.sqrt(target_var)                    # Var(W_1) (Var(W_2) + 1) = target
    return per_factor(target_var / (1 + v2)), per_factor(v2)


class _Hadamard(nn.Module):
    """Shared by the linear and conv forms: W_1 * W_2 (or tanh'd, or W_1 * (W_2 + 1))."""

    personal: bool
    tanh: bool

    def _combine(self, w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
        if self.tanh:
            w1, w2 = torch.tanh(w1), torch.tanh(w2)
        return w1 * (w2 + 1) if self.personal else w1 * w2


class HadamardLinear(_Hadamard):
    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True,
                 tanh: bool = False, personal: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.tanh, self.personal = tanh, personal
        self.x1 = nn.Parameter(torch.empty(out_features, rank))
        self.y1 = nn.Parameter(torch.empty(in_features, rank))
        self.x2 = nn.Parameter(torch.empty(out_features, rank))
        self.y2 = nn.Parameter(torch.empty(in_features, rank))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        s1, s2 = _factor_std(2.0 / self.in_features, self.rank, self.personal, conv=False)
        for p, s in ((self.x1, s1), (self.y1, s1), (self.x2, s2), (self.y2, s2)):
            nn.init.normal_(p, 0.0, s)
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias, -bound, bound)

    def weight(self) -> torch.Tensor:
        return self._combine(self.x1 @ self.y1.T, self.x2 @ self.y2.T)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight(), self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"rank={self.rank}, personal={self.personal}, tanh={self.tanh}")


class HadamardConv2d(_Hadamard):
    def __init__(self, conv: nn.Conv2d, rank: int, tanh: bool = False,
                 personal: bool = False) -> None:
        super().__init__()
        if conv.groups != 1 or conv.kernel_size[0] != conv.kernel_size[1]:
            raise ValueError("FedPara conv layers need groups = 1 and a square kernel")
        o, i, k = conv.out_channels, conv.in_channels, conv.kernel_size[0]
        self.out_channels, self.in_channels, self.k, self.rank = o, i, k, rank
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        self.tanh, self.personal = tanh, personal
        for n in ("1", "2"):
            setattr(self, f"t{n}", nn.Parameter(torch.empty(rank, rank, k, k)))
            setattr(self, f"o{n}", nn.Parameter(torch.empty(rank, o)))
            setattr(self, f"i{n}", nn.Parameter(torch.empty(rank, i)))
        self.bias = nn.Parameter(torch.empty(o)) if conv.bias is not None else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        fan_in = self.in_channels * self.k * self.k
        s1, s2 = _factor_std(2.0 / fan_in, self.rank, self.personal, conv=True)
        for n, s in (("1", s1), ("2", s2)):
            for name in ("t", "o", "i"):
                nn.init.normal_(getattr(self, f"{name}{n}"), 0.0, s)
        if self.bias is not None:
            bound = 1 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -bound, bound)

    def weight(self) -> torch.Tensor:
        w1 = torch.einsum("abhw,ao,bc->ochw", self.t1, self.o1, self.i1)
        w2 = torch.einsum("abhw,ao,bc->ochw", self.t2, self.o2, self.i2)
        return self._combine(w1, w2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight(), self.bias, self.stride, self.padding, self.dilation)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.k}, "
                f"rank={self.rank}, personal={self.personal}, tanh={self.tanh}")


def fedpara_transform(model: nn.Module, gamma: float, layers: str = "auto", tanh: bool = False,
                      personal: bool = False) -> nn.Module:
    """Replace the model's layers by FedPara layers in place; returns the model.

    `layers`: `conv` (every Conv2d; the paper's VGG: classifier and norms stay standard),
    `linear` (every Linear), `all`, or `auto` (conv if the model has a Conv2d, else linear:
    the paper's choice for its CNNs and MLPs). A layer whose FedPara form would not be smaller
    than the original stays as it is."""
    if not 0 <= gamma <= 1:
        raise ValueError(f"fedpara gamma = {gamma} must be in [0, 1]")
    if layers not in LAYER_CHOICES:
        raise ValueError(f"fedpara layers = {layers!r}: one of {', '.join(LAYER_CHOICES)}")
    has_conv = any(isinstance(m, nn.Conv2d) for m in model.modules())
    kinds = {"auto": (nn.Conv2d,) if has_conv else (nn.Linear,), "conv": (nn.Conv2d,),
             "linear": (nn.Linear,), "all": (nn.Conv2d, nn.Linear)}[layers]
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, kinds):
                continue
            replacement = _replacement(child, gamma, tanh, personal)
            if replacement is not None:
                setattr(parent, name, replacement)
    return model


def _replacement(layer: nn.Module, gamma: float, tanh: bool, personal: bool
                 ) -> nn.Module | None:
    if isinstance(layer, nn.Linear):
        m, n = layer.out_features, layer.in_features
        rank = linear_rank(m, n, gamma)
        if 2 * rank * (m + n) >= m * n:
            return None
        return HadamardLinear(n, m, rank, bias=layer.bias is not None, tanh=tanh,
                              personal=personal)
    if isinstance(layer, nn.Conv2d) and layer.groups == 1 and (
            layer.kernel_size[0] == layer.kernel_size[1]):
        o, i, k = layer.out_channels, layer.in_channels, layer.kernel_size[0]
        rank = conv_rank(o, i, k, gamma)
        if 2 * (rank * rank * k * k + rank * (o + i)) >= o * i * k * k:
            return None
        return HadamardConv2d(layer, rank, tanh=tanh, personal=personal)
    return None


def is_local_factor(key: str) -> bool:
    """Whether a state-dict key is a pFedPara local factor (W_2's), by its last name."""
    return key.rsplit(".", 1)[-1] in LOCAL_FACTORS
