"""The optimizer and its learning-rate schedule, stepped once per training step."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from trainers.config import TrainConfig


def build_optimizer(
    cfg: TrainConfig, params: Iterable[torch.nn.Parameter], total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW or SGD, then one-cycle, or cosine / constant after a linear warm-up."""
    optim = cfg.optim
    if optim.name == "sgd":
        opt = torch.optim.SGD(params, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=optim.lr, weight_decay=optim.weight_decay)
    if optim.schedule == "onecycle":
        return opt, torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=optim.lr, total_steps=total_steps)
    warmup = optim.warmup_epochs * total_steps // max(1, cfg.trainer.epochs)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, _warmup_then(optim.schedule, warmup, total_steps))


def _warmup_then(schedule: str, warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor
