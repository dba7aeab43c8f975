"""Local SGD: `PlainSgd` and `sgd_epochs` give exactly what torch's own SGD loop gives."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedsqueeze.strategies.training import ClientData, PlainSgd, sgd_epochs


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3))


def _data(n: int = 45) -> ClientData:
    generator = torch.Generator().manual_seed(7)
    return ClientData(0, torch.randn(n, 3, 4, generator=generator),
                      torch.randint(0, 3, (n,), generator=generator))


def _torch_reference(model, data, *, epochs, batch_size, lr, momentum, weight_decay, seed,
                     max_steps=0):
    """The textbook loop: torch.optim.SGD over shuffled batches, indexed per batch."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum,
                                weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    steps = 0
    for _ in range(epochs):
        order = torch.randperm(data.num_examples, generator=generator)
        total, seen = 0.0, 0
        for index in order.split(batch_size):
            optimizer.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(data.x[index]), data.y[index])
            loss.backward()
            optimizer.step()
            total, seen, steps = total + float(loss) * len(index), seen + len(index), steps + 1
            if steps == max_steps:
                return total / seen
    return total / seen


@pytest.mark.parametrize("momentum,weight_decay", [(0.0, 0.0), (0.9, 0.0), (0.5, 1e-3)])
def test_plain_sgd_matches_torch_optimizer_bit_for_bit(momentum, weight_decay):
    ours, theirs = _model(1), _model(1)
    ours[3].bias.requires_grad_(False)  # a parameter without gradient is left alone
    theirs[3].bias.requires_grad_(False)
    optimizer = PlainSgd(ours.parameters(), lr=0.1, momentum=momentum,
                         weight_decay=weight_decay)
    reference = torch.optim.SGD(theirs.parameters(), lr=0.1, momentum=momentum,
                                weight_decay=weight_decay)
    data = _data()
    for step in range(4):
        batch = slice(10 * step, 10 * step + 10)
        for model, opt in ((ours, optimizer), (theirs, reference)):
            opt.zero_grad()
            nn.functional.cross_entropy(model(data.x[batch]), data.y[batch]).backward()
            opt.step()
    for mine, reference_param in zip(ours.parameters(), theirs.parameters()):
        assert torch.equal(mine, reference_param)
    assert ours[1].weight.grad is not None
    optimizer.zero_grad()
    assert all(p.grad is None for p in optimizer.params)


@pytest.mark.parametrize("batch_size,max_steps", [(10, 0), (45, 0), (64, 0), (10, 7)])
def test_sgd_epochs_matches_the_torch_loop(batch_size, max_steps):
    """Same batches (a partial last one included), same updates, same mean loss."""
    data = _data()
    ours, theirs = _model(2), _model(2)
    calls = []
    options = dict(epochs=2, batch_size=batch_size, lr=0.05, momentum=0.9, weight_decay=1e-4,
                   seed=11, max_steps=max_steps)
    loss = sgd_epochs(ours, data, after_step=lambda m: calls.append(1), **options)
    reference_loss = _torch_reference(theirs, data, **options)
    for mine, reference_param in zip(ours.parameters(), theirs.parameters()):
        assert torch.equal(mine, reference_param)
    assert loss == reference_loss
    steps_per_epoch = -(-data.num_examples // batch_size)
    assert len(calls) == (max_steps or 2 * steps_per_epoch)
