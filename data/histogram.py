"""Label distribution of client partitions: counts, a text table and a stacked-bar PNG."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fedsqueeze.data.errors import DataError


def label_histogram(
    labels: np.ndarray, partitions: Sequence[np.ndarray], num_classes: int
) -> np.ndarray:
    """(P, C) int64 counts: row p counts the labels of partition p."""
    labels = np.asarray(labels)
    if labels.size and not 0 <= labels.min() <= labels.max() < num_classes:
        raise DataError(
            f"labels must be in 0..{num_classes - 1}, got {labels.min()}..{labels.max()}"
        )
    hist = np.zeros((len(partitions), num_classes), dtype=np.int64)
    for row, part in zip(hist, partitions):
        row += np.bincount(labels[np.asarray(part, dtype=np.int64)], minlength=num_classes)
    return hist


def format_histogram(hist: np.ndarray) -> str:
    """A text table, one row per client: its count per class and its total."""
    hist = np.asarray(hist)
    header = ["client", *(f"c{c}" for c in range(hist.shape[1])), "total"]
    rows = [[str(p), *map(str, row), str(row.sum())] for p, row in enumerate(hist)]
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows)]
    return "\n".join(
        " ".join(cell.rjust(width) for cell, width in zip(line, widths)) for line in [header, *rows]
    )


def plot_histogram(hist: np.ndarray, path: str | Path) -> None:
    """Write a PNG: one stacked bar per client, one colour per class."""
    # Figure without pyplot: uses the Agg canvas, never touches the process's GUI backend.
    from matplotlib import colormaps
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    hist = np.asarray(hist)
    num_clients, num_classes = hist.shape
    fig = Figure(figsize=(max(6.0, 0.25 * num_clients), 4.0), layout="constrained")
    ax = fig.add_subplot()
    palette = colormaps["tab10" if num_classes <= 10 else "tab20"]
    clients = np.arange(num_clients)
    bottom = np.zeros(num_clients)
    for c in range(num_classes):
        ax.bar(clients, hist[:, c], bottom=bottom, label=str(c), color=palette(c % palette.N))
        bottom += hist[:, c]
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("client (partition id)")
    ax.set_ylabel("samples")
    ax.set_title("label distribution per client")
    if num_classes <= 20:
        ax.legend(title="class", fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.savefig(path, dpi=100)
