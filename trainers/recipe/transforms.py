"""Per-image train and validation transforms, and the batch mix (mixup / cutmix) of training batches."""

from __future__ import annotations

import torch
from torchvision.transforms import v2

from trainers.config import AugConfig, TrainConfig


def train_transform(cfg: TrainConfig) -> v2.Transform:
    """uint8 image (tensor or PIL) -> resized, augmented, normalised float tensor."""
    return _transform(cfg, train=True)


def val_transform(cfg: TrainConfig) -> v2.Transform:
    """uint8 image (tensor or PIL) -> resized, normalised float tensor."""
    return _transform(cfg, train=False)


def batch_mix(cfg: TrainConfig, num_classes: int) -> v2.Transform | None:
    """Mixup and/or cutmix of (images, labels), one chosen per batch; None when both are off."""
    mixes = []
    if cfg.aug.mixup_alpha > 0:
        mixes.append(v2.MixUp(alpha=cfg.aug.mixup_alpha, num_classes=num_classes))
    if cfg.aug.cutmix_alpha > 0:
        mixes.append(v2.CutMix(alpha=cfg.aug.cutmix_alpha, num_classes=num_classes))
    return v2.RandomChoice(mixes) if mixes else None


def _transform(cfg: TrainConfig, train: bool) -> v2.Transform:
    size = cfg.data.image_size
    steps: list[v2.Transform] = [v2.ToImage(), v2.Resize((size, size), antialias=True)]
    if train:
        steps += _augmentations(cfg.aug, size)
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(cfg.data.mean, cfg.data.std)]
    if train and cfg.aug.random_erasing > 0:
        steps.append(v2.RandomErasing(p=cfg.aug.random_erasing))
    return v2.Compose(steps)


def _augmentations(aug: AugConfig, size: int) -> list[v2.Transform]:
    steps: list[v2.Transform] = []
    if aug.crop_scale:
        steps.append(v2.RandomResizedCrop(size, scale=aug.crop_scale, antialias=True))
    if aug.hflip > 0:
        steps.append(v2.RandomHorizontalFlip(aug.hflip))
    if aug.rotation > 0:
        steps.append(v2.RandomRotation(aug.rotation))
    if aug.trivial_augment:
        steps.append(v2.TrivialAugmentWide())
    return steps
