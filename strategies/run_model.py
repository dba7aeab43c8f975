"""The run's model, built identically on the server and on every client."""

from __future__ import annotations

import torch
from torch import nn

from fedsqueeze.data import dataset_info
from fedsqueeze.models import build_model

from .model_transform import ModelTransform
from .settings import RunSettings


def build_run_model(settings: RunSettings, transform: ModelTransform | None = None
                    ) -> nn.Module:
    """The model named in run config, initialised from `seed` (the server's initial model),
    with the run's model transform (`Method.transform`) applied."""
    info = dataset_info(settings.dataset)
    with torch.random.fork_rng(devices=[]):  # the model is built on the CPU
        torch.default_generator.manual_seed(settings.seed)
        model = build_model(settings.model, info.num_classes, info.image_shape,
                            init=settings.model_init)
        return transform.apply(model) if transform is not None else model
