"""Central evaluation of the global model on the dataset's test split (on the server's CPU),
and the aggregation of the clients' local evaluations."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from flwr.app import Message
from torch import nn

from fedsqueeze.data import load_split, to_tensor
from fedsqueeze.strategies.payload import METRICS_RECORD
from fedsqueeze.strategies.replies import screen
from fedsqueeze.strategies.settings import RunSettings, names_in
from fedsqueeze.strategies.tensors import load_arrays
from fedsqueeze.strategies.training import METRIC_PREFIX, Evaluation, evaluate


class CentralEvaluator:
    def __init__(self, settings: RunSettings, model: nn.Module) -> None:
        images, labels = load_split(settings.dataset, "test", settings.data_dir or None,
                                    download=settings.data_download)
        self.x = to_tensor(images, scale=settings.input_scale)
        self.y = torch.tensor(labels, dtype=torch.long)
        self.model = model
        self.batch_size = settings.eval_batch_size
        self.loss = settings.loss
        self.metrics = names_in(settings.metrics)

    def __call__(self, arrays: dict, metrics: bool = True) -> Evaluation:
        """Loss, accuracy (and, with `metrics`, the run's metrics) of the model with these
        travelling tensors."""
        load_arrays(self.model, arrays)
        return evaluate(self.model, self.x, self.y, self.batch_size, self.loss,
                        self.metrics if metrics else ())


def local_evaluation(replies: list[Message], sent: dict[int, str]
                     ) -> tuple[dict[str, Any] | None, list[tuple[Message, str]]]:
    """The clients' local evaluations aggregated: `accuracy_local` (mean over clients),
    `accuracy_local_min`, `loss_local`, `accuracy_local_<name>` (+ `_min`) of their own
    models, `metrics_local` (the run's metrics, means); and the rejected replies with why
    (bad or out-of-range metrics)."""
    good, rejected = screen(replies, sent)
    accuracies, losses = [], []
    own: dict[str, list[float]] = {}
    registered: dict[str, list[float]] = {}
    for reply in good:
        try:
            metrics = reply.content.metric_records[METRICS_RECORD]
            accuracy, loss = float(metrics["accuracy"]), float(metrics["loss"])
            extra = {k[len("accuracy-"):]: float(v) for k, v in metrics.items()
                     if k.startswith("accuracy-")}
            values = {k[len(METRIC_PREFIX):]: float(v) for k, v in metrics.items()
                      if k.startswith(METRIC_PREFIX)}
        except (KeyError, ValueError, TypeError) as err:
            rejected.append((reply, f"bad metrics: {err}"))
            continue
        if not (0 <= accuracy <= 1 and np.isfinite(loss)
                and all(0 <= a <= 1 for a in extra.values())
                and all(np.isfinite(v) for v in values.values())):
            rejected.append((reply, f"rejected: accuracy {accuracy!r} or loss {loss!r} out "
                                    "of range"))
            continue
        accuracies.append(accuracy)
        losses.append(loss)
        for name, value in extra.items():
            own.setdefault(name, []).append(value)
        for name, value in values.items():
            registered.setdefault(name, []).append(value)
    if not accuracies:
        return None, rejected
    record: dict[str, Any] = {"accuracy_local": float(np.mean(accuracies)),
                              "accuracy_local_min": float(min(accuracies)),
                              "loss_local": float(np.mean(losses)),
                              "local_evaluations": len(accuracies)}
    for name, values in sorted(own.items()):
        record[f"accuracy_local_{name}"] = float(np.mean(values))
        record[f"accuracy_local_{name}_min"] = float(min(values))
    if registered:
        record["metrics_local"] = {name: float(np.mean(v))
                                   for name, v in sorted(registered.items())}
    return record, rejected
