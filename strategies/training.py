"""Local training and evaluation on pre-tensorised data (no DataLoader, no per-sample Python).

The loss and the optimizer are named in run config (`loss`, `optimizer`); a user's plugin adds
its own with `register_loss` / `register_optimizer`. Evaluation counts the loss and top-1
accuracy, and the registered metrics run config names (`metrics`; `register_metric`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.optim.sgd import sgd

from .hooks import TrainingHooks
from .settings import ConfigError, RunSettings, register_in

LossFactory = Callable[[str], nn.Module]  # reduction ("mean", "sum") -> loss(logits, targets)
OptimizerFactory = Callable[..., Any]  # (params, *, lr, momentum, weight_decay) -> an object
#                                        with zero_grad() and step(), as torch's optimizers
LOSSES: dict[str, LossFactory] = {
    "cross-entropy": lambda reduction: nn.CrossEntropyLoss(reduction=reduction)}
OPTIMIZERS: dict[str, OptimizerFactory] = {}
Metric = Callable[[torch.Tensor, torch.Tensor], float]  # (logits, targets) of a whole split
METRICS: dict[str, Metric] = {}
METRIC_PREFIX = "metric-"  # a registered metric's key in a client's evaluation reply


def register_loss(name: str) -> Callable[[LossFactory], LossFactory]:
    """Decorator: `factory(reduction) -> loss module` becomes run-config `loss = name`."""
    return register_in(LOSSES, "loss", name)


def register_optimizer(name: str) -> Callable[[OptimizerFactory], OptimizerFactory]:
    """Decorator: `factory(params, *, lr, momentum, weight_decay)` becomes run-config
    `optimizer = name` (the methods' training hooks run after each of its steps)."""
    return register_in(OPTIMIZERS, "optimizer", name)


def register_metric(name: str) -> Callable[[Metric], Metric]:
    """Decorator: `metric(logits, targets) -> float`, over a whole evaluation split, becomes a
    name run-config `metrics` may list (reported beside loss and accuracy, central and local)."""
    return register_in(METRICS, "metric", name)


def metric_named(name: str) -> Metric:
    if name not in METRICS:
        known = ", ".join(sorted(METRICS)) or "none registered"
        raise ConfigError(f"run-config 'metrics' names {name!r}: not a registered metric "
                          f"({known}); register yours with register_metric in a plugin")
    return METRICS[name]


def loss_named(name: str, reduction: str = "mean") -> nn.Module:
    if name not in LOSSES:
        raise ConfigError(f"run-config 'loss' = {name!r}: one of {', '.join(sorted(LOSSES))} "
                          "(or register yours with register_loss in a plugin)")
    return LOSSES[name](reduction)


def optimizer_named(name: str) -> OptimizerFactory:
    if name not in OPTIMIZERS:
        raise ConfigError(f"run-config 'optimizer' = {name!r}: one of "
                          f"{', '.join(sorted(OPTIMIZERS))} (or register yours with "
                          "register_optimizer in a plugin)")
    return OPTIMIZERS[name]


@dataclass
class ClientData:
    """One client's partition, already tensors on the training device."""

    partition_id: int
    x: torch.Tensor
    y: torch.Tensor

    @property
    def num_examples(self) -> int:
        return int(self.y.shape[0])


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (seed, round, partition-id, ...), stable across machines."""
    return int(np.random.SeedSequence(list(parts)).generate_state(2, np.uint64)[0] >> np.uint64(1))


def seed_torch(seed: int, device: torch.device) -> None:
    """`torch.manual_seed` for the devices a client computes on: the CPU generator always,
    CUDA's only on a CUDA device. (`torch.manual_seed` also queues lazy seeds, each with a
    stack trace, for every accelerator backend torch was built with: milliseconds per call
    in a client that never uses one.)"""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed_all(seed)


class PlainSgd:
    """`torch.optim.SGD`'s update without its per-step machinery.

    `Optimizer.step` wraps each call in a profiler range, step hooks and dynamo guards, and
    `zero_grad` in another range: about a tenth of an fc2 step on one CPU thread. This class
    calls the same functional update (`torch.optim.sgd.sgd`, with SGD's defaults: dampening
    0, no Nesterov, foreach/fused chosen by torch) on the parameters that have a gradient,
    with a momentum buffer per parameter, so the result is bit-identical to
    `torch.optim.SGD(params, lr, momentum, weight_decay=...)` (a test)."""

    def __init__(self, params: Iterable[nn.Parameter], *, lr: float, momentum: float,
                 weight_decay: float) -> None:
        self.params = list(params)
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.momentum_buffers: list[torch.Tensor | None] = [None] * len(self.params)

    def zero_grad(self) -> None:
        for param in self.params:
            param.grad = None

    @torch.no_grad()
    def step(self) -> None:
        live = [i for i, p in enumerate(self.params) if p.grad is not None]
        grads = [self.params[i].grad for i in live]
        buffers = [self.momentum_buffers[i] for i in live]
        sgd([self.params[i] for i in live], grads, buffers,
            has_sparse_grad=any(g.is_sparse for g in grads), weight_decay=self.weight_decay,
            momentum=self.momentum, lr=self.lr, dampening=0.0, nesterov=False, maximize=False)
        for i, buffer in zip(live, buffers):
            self.momentum_buffers[i] = buffer


OPTIMIZERS["sgd"] = PlainSgd


def sgd_epochs(
    model: nn.Module,
    data: ClientData,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float,
    weight_decay: float,
    seed: int,
    after_step: Callable[[nn.Module], None] | None = None,
    max_steps: int = 0,
    loss: str = "cross-entropy",
    optimizer: str = "sgd",
) -> float:
    """Mini-batch training (plain SGD by default); returns the mean training loss of the last
    epoch.

    `after_step` runs after every optimizer step (sparse methods re-apply their masks there);
    `max_steps` > 0 stops after that many steps in all (the last epoch may be partial);
    `loss`, `optimizer`: registered names (`LOSSES`, `OPTIMIZERS`).
    """
    model.train()
    opt = optimizer_named(optimizer)(model.parameters(), lr=lr, momentum=momentum,
                                     weight_decay=weight_decay)
    loss_fn = loss_named(loss)
    generator = torch.Generator().manual_seed(seed)
    n = data.num_examples
    # Every batch is gathered into the same two buffers: a gather of the whole shuffled
    # partition per epoch would write (and page-fault in) a fresh copy of it each time.
    x_batch = data.x.new_empty((min(batch_size, n), *data.x.shape[1:]))
    y_batch = data.y.new_empty((min(batch_size, n),))
    last_loss = float("nan")
    steps = 0
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator).to(data.x.device)
        total, seen = 0.0, 0
        for start in range(0, n, batch_size):
            index = order[start:start + batch_size]
            size = index.numel()
            xs = torch.index_select(data.x, 0, index, out=x_batch[:size])
            ys = torch.index_select(data.y, 0, index, out=y_batch[:size])
            opt.zero_grad()
            batch_loss = loss_fn(model(xs), ys)
            batch_loss.backward()
            opt.step()
            if after_step is not None:
                after_step(model)
            total += float(batch_loss.detach()) * size
            seen += size
            steps += 1
            if steps == max_steps:
                break
        last_loss = total / max(seen, 1)
        if steps == max_steps:
            break
    return last_loss


def sgd_steps(model: nn.Module, data: ClientData, *, steps: int, batch_size: int, **options
              ) -> float:
    """`steps` mini-batch SGD steps (over as many epochs as that takes); the mean loss of the
    last (partial) epoch. Options as `sgd_epochs`."""
    per_epoch = -(-data.num_examples // batch_size)
    return sgd_epochs(model, data, epochs=-(-steps // max(per_epoch, 1)), batch_size=batch_size,
                      max_steps=steps, **options)


class Evaluation(NamedTuple):
    loss: float
    accuracy: float
    metrics: dict[str, float]  # the registered metrics asked for, by name


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int,
             loss: str = "cross-entropy", metrics: Iterable[str] = ()) -> Evaluation:
    """Mean loss, top-1 accuracy and the named metrics of `model` on (x, y); `loss` and
    `metrics` registered names."""
    model.eval()
    loss_fn = loss_named(loss, "sum")
    metric_fns = {name: metric_named(name) for name in metrics}
    total_loss, correct = 0.0, 0
    outputs = []
    for start in range(0, len(y), batch_size):
        logits = model(x[start:start + batch_size])
        target = y[start:start + batch_size]
        total_loss += float(loss_fn(logits, target))
        correct += int((logits.argmax(dim=1) == target).sum())
        if metric_fns:
            outputs.append(logits.float().cpu())
    n = max(len(y), 1)
    values = {}
    if metric_fns:
        logits = torch.cat(outputs) if outputs else torch.empty(0)
        values = {name: float(fn(logits, y.cpu())) for name, fn in metric_fns.items()}
    return Evaluation(total_loss / n, correct / n, values)


def minibatch_gradient(model: nn.Module, data: ClientData, batch_size: int, seed: int,
                       loss: str = "cross-entropy") -> dict[str, np.ndarray]:
    """The dense gradient of one random minibatch's loss (numpy, by parameter name)."""
    generator = torch.Generator().manual_seed(seed ^ 0x5EED)
    batch = torch.randperm(data.num_examples, generator=generator)[:batch_size].to(
        data.x.device)
    model.train()
    model.zero_grad(set_to_none=True)
    loss_named(loss)(model(data.x[batch]), data.y[batch]).backward()
    grads = {name: p.grad.detach().cpu().numpy().copy() for name, p in model.named_parameters()
             if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


def local_training(model: nn.Module, data: ClientData, settings: RunSettings,
                   server_round: int, seed: int, hooks: TrainingHooks) -> float:
    """The run's local SGD (`local-epochs`, or the `local_steps` a method asks for) honouring
    a message's training hooks; the mean loss of the last epoch."""
    options = dict(batch_size=settings.batch_size, lr=settings.lr_at(server_round),
                   momentum=settings.momentum, weight_decay=settings.weight_decay, seed=seed,
                   after_step=hooks.after_step, loss=settings.loss,
                   optimizer=settings.optimizer)
    hooks.attach(model)
    try:
        if hooks.local_steps:
            loss = sgd_steps(model, data, steps=hooks.local_steps, **options)
        else:
            loss = sgd_epochs(model, data, epochs=settings.local_epochs, **options)
        hooks.after_training(model, lambda: minibatch_gradient(
            model, data, settings.batch_size, seed, loss=settings.loss))
    finally:
        hooks.detach()
    return loss
