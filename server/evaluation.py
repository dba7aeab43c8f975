"""Central evaluation of the global model on the dataset's test split (on the server's CPU)."""

from __future__ import annotations

import torch
from torch import nn

from fedsqueeze.data import load_split, to_tensor
from fedsqueeze.strategies.settings import RunSettings
from fedsqueeze.strategies.tensors import load_arrays
from fedsqueeze.strategies.training import evaluate


class CentralEvaluator:
    def __init__(self, settings: RunSettings, model: nn.Module) -> None:
        images, labels = load_split(settings.dataset, "test", settings.data_dir or None,
                                    download=settings.data_download)
        self.x = to_tensor(images, scale=settings.input_scale)
        self.y = torch.tensor(labels, dtype=torch.long)
        self.model = model
        self.batch_size = settings.eval_batch_size

    def __call__(self, arrays: dict) -> tuple[float, float]:
        """(loss, accuracy) of the model with these travelling tensors."""
        load_arrays(self.model, arrays)
        return evaluate(self.model, self.x, self.y, self.batch_size)
