"""Evaluation artifacts of the best epoch: confusion matrix figure and per-class report."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless: figures go to files, never to a window
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from sklearn.metrics import classification_report, confusion_matrix  # noqa: E402


def per_class_report(probs: torch.Tensor, labels: torch.Tensor, class_names: list[str]) -> dict:
    """Precision, recall, F1 and support per class (sklearn's report as a dict)."""
    return classification_report(
        labels.numpy(),
        probs.argmax(1).numpy(),
        labels=list(range(len(class_names))),
        target_names=class_names,
        output_dict=True,
        zero_division=0,
    )


def confusion_figure(probs: torch.Tensor, labels: torch.Tensor, class_names: list[str]) -> Figure:
    matrix = confusion_matrix(labels.numpy(), probs.argmax(1).numpy(), labels=list(range(len(class_names))))
    size = min(12, 2 + 0.5 * len(class_names))
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set(
        xticks=range(len(class_names)),
        yticks=range(len(class_names)),
        xticklabels=class_names,
        yticklabels=class_names,
        xlabel="predicted",
        ylabel="true",
        title="Confusion matrix (best epoch)",
    )
    for (row, col), count in zip(
        ((r, c) for r in range(len(matrix)) for c in range(len(matrix))), matrix.flat, strict=True
    ):
        color = "white" if count > matrix.max() / 2 else "black"
        ax.text(col, row, str(count), ha="center", va="center", color=color, fontsize=8)
    fig.tight_layout()
    return fig
