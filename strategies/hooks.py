"""What a method asks of the client's own training loop, beyond "arrays in, arrays out".

A method's client side (run by `method_mod`) decodes the server's message into the plain
arrays the handler loads, and sets the `TrainingHooks` of that message for the handler to
honour; the handler reads them with `training_hooks()`:

    hooks = training_hooks()              # no-op hooks outside a method's message
    hooks.attach(model, optimizer)        # before the first step (masks, trackers)
    for ...: loss.backward(); optimizer.step()   # `attach` hooked every step already
    hooks.after_training(model, gradient) # after the last step (FedDST's readjustment)
    hooks.detach()

`attach` registers what must hold at every step as torch hooks (a tensor hook that masks a
gradient, a step post-hook on a torch optimizer that re-applies a mask or tracks a change),
so the loop calls nothing of ours between steps; a loop without a torch optimizer calls
`after_step(model)` itself after each step. `local_steps` > 0 asks for exactly that many
optimizer steps (GWPF's H). `gradient`, for `after_training`, returns the dense gradient of
one minibatch's loss at the trained model by parameter name (numpy); only FedDST's
readjustment rounds call it.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import nn

Gradient = Callable[[], dict[str, np.ndarray]]


class TrainingHooks:
    """No requirement at all (what plain methods and channels ask)."""

    local_steps: int = 0

    def __init__(self) -> None:
        self._handles: list = []

    def attach(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Install what must hold during training; with a torch `optimizer`, `after_step`
        runs after each of its steps."""
        self._handles = list(self.install(model))
        if optimizer is not None:
            self._handles.append(optimizer.register_step_post_hook(
                lambda *_: self.after_step(model)))

    def install(self, model: nn.Module) -> Iterator:
        """A method's tensor hooks (their handles); called by `attach`."""
        return iter(())

    def after_step(self, model: nn.Module) -> None:
        """What follows every optimizer step."""

    def after_training(self, model: nn.Module, gradient: Gradient | None = None) -> None:
        """What follows the last step (the model may still change here)."""

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


_CURRENT: contextvars.ContextVar[TrainingHooks | None] = contextvars.ContextVar(
    "fedsqueeze_training_hooks", default=None)


def training_hooks() -> TrainingHooks:
    """The hooks of the message being handled (no-op hooks when no method set any)."""
    return _CURRENT.get() or TrainingHooks()


@contextlib.contextmanager
def using_hooks(hooks: TrainingHooks) -> Iterator[None]:
    token = _CURRENT.set(hooks)
    try:
        yield
    finally:
        _CURRENT.reset(token)
