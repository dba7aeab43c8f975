"""Local training and evaluation on pre-tensorised data (no DataLoader, no per-sample Python)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


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
) -> float:
    """Plain mini-batch SGD; returns the mean training loss of the last epoch.

    `after_step` runs after every optimizer step (sparse methods re-apply their masks there);
    `max_steps` > 0 stops after that many steps in all (the last epoch may be partial).
    """
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum,
                                weight_decay=weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(seed)
    n = data.num_examples
    last_loss = float("nan")
    steps = 0
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator).to(data.x.device)
        # One gather per epoch, then contiguous slices: the same batches as indexing each
        # batch, with one copy instead of two index kernels per step.
        xs, ys = data.x[order], data.y[order]
        total, seen = 0.0, 0
        for start in range(0, n, batch_size):
            batch = slice(start, start + batch_size)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(xs[batch]), ys[batch])
            loss.backward()
            optimizer.step()
            if after_step is not None:
                after_step(model)
            size = min(batch_size, n - start)
            total += float(loss.detach()) * size
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


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int
             ) -> tuple[float, float]:
    """(mean cross-entropy loss, accuracy) of `model` on (x, y)."""
    model.eval()
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    total_loss, correct = 0.0, 0
    for start in range(0, len(y), batch_size):
        logits = model(x[start:start + batch_size])
        target = y[start:start + batch_size]
        total_loss += float(loss_fn(logits, target))
        correct += int((logits.argmax(dim=1) == target).sum())
    n = max(len(y), 1)
    return total_loss / n, correct / n
