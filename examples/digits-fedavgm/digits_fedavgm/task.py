"""The model, the data and the training: plain PyTorch, nothing of fedsqueeze."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class Net(nn.Module):
    """A 2-layer CNN for 8x8 digits."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32 * 2 * 2, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc(x.flatten(1))


def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    data = load_digits()
    images = torch.tensor(data.images / 16.0, dtype=torch.float32).unsqueeze(1)
    return images, torch.tensor(data.target, dtype=torch.long)


def load_partition(partition_id: int, num_partitions: int, batch_size: int = 32
                   ) -> DataLoader:
    """This client's shard of the first 1,500 digits (a seeded shuffle, equal shards)."""
    images, labels = _digits()
    order = np.random.default_rng(0).permutation(1500)
    mine = torch.as_tensor(np.array_split(order, num_partitions)[partition_id])
    return DataLoader(TensorDataset(images[mine], labels[mine]), batch_size=batch_size,
                      shuffle=True, generator=torch.Generator().manual_seed(partition_id))


def load_test() -> DataLoader:
    """The last 297 digits, which no client holds."""
    images, labels = _digits()
    return DataLoader(TensorDataset(images[1500:], labels[1500:]), batch_size=256)


def train(model: nn.Module, loader: DataLoader, epochs: int, lr: float) -> float:
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    total, seen = 0.0, 0
    for _ in range(epochs):
        for x, y in loader:
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            total, seen = total + loss.item() * len(y), seen + len(y)
    return total / max(seen, 1)


def test(model: nn.Module, loader: DataLoader) -> tuple[float, float]:
    model.eval()
    loss, correct, seen = 0.0, 0, 0
    with torch.no_grad():
        for x, y in loader:
            out = model(x)
            loss += nn.functional.cross_entropy(out, y, reduction="sum").item()
            correct += (out.argmax(1) == y).sum().item()
            seen += len(y)
    return loss / seen, correct / seen
