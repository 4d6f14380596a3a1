"""The training loss (also reported as train_loss and val_loss)."""

from __future__ import annotations

import torch
from torch import nn

from trainers.config import TrainConfig


def build_loss(cfg: TrainConfig, class_weights: torch.Tensor | None) -> nn.Module:
    """Cross-entropy with optional label smoothing and inverse-frequency class weights."""
    weights = class_weights if cfg.loss.class_weights == "balanced" else None
    return nn.CrossEntropyLoss(weight=weights, label_smoothing=cfg.loss.label_smoothing)
