"""The LightningModule of the harness: the fit loop's steps, metrics and best-epoch tracking around the
recipe's model, batch mix, loss and optimizer (trainers/recipe/)."""

from __future__ import annotations

import time

import lightning as L
import torch
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_auroc,
    multiclass_f1_score,
)

from trainers import recipe
from trainers.config import TrainConfig


def epoch_metrics(probs: torch.Tensor, targets: torch.Tensor, num_classes: int) -> dict[str, float]:
    """Accuracy, macro-F1 and macro AUROC over one validation pass."""
    return {
        "val_acc": multiclass_accuracy(probs, targets, num_classes, average="micro").item(),
        "val_macro_f1": multiclass_f1_score(probs, targets, num_classes, average="macro").item(),
        "val_auroc": multiclass_auroc(probs, targets, num_classes, average="macro").item(),
    }


class Classifier(L.LightningModule):
    def __init__(self, cfg: TrainConfig, num_classes: int, class_weights: torch.Tensor | None = None):
        super().__init__()
        self.cfg, self.num_classes = cfg, num_classes
        self.net = recipe.build_model(cfg, num_classes)
        self.loss = recipe.build_loss(cfg, class_weights)
        self.mix = recipe.batch_mix(cfg, num_classes)
        self.best: float | None = None
        self.best_epoch = -1
        self.best_outputs: tuple[torch.Tensor, torch.Tensor] | None = None
        self.images_per_s: list[float] = []
        self._epoch: dict[str, float] = {}
        self._train = _Running()
        self._val: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def on_train_epoch_start(self) -> None:
        self._train = _Running()

    def on_train_batch_end(self, *_) -> None:
        self._train.mark()

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> torch.Tensor:
        images, labels = batch
        targets = labels
        if self.mix is not None:
            images, targets = self.mix(images, labels)
        logits = self(images)
        loss = self.loss(logits, targets)
        self._train.add(loss.detach(), (logits.argmax(1) == labels).sum(), len(labels))
        self.log("train_loss", loss, prog_bar=True, logger=False)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> None:
        images, labels = batch
        logits = self(images)
        probs = logits.softmax(1)
        if self.cfg.metric.tta:
            probs = (probs + self(images.flip(-1)).softmax(1)) / 2
        self._val.append((self.loss(logits, labels).detach(), probs.detach().float(), labels))

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        losses, probs, labels = zip(*self._val, strict=True)
        self._val = []
        probs, labels = torch.cat(probs).cpu(), torch.cat(labels).cpu()
        metrics = {
            "val_loss": torch.stack(losses).mean().item(),
            **epoch_metrics(probs, labels, self.num_classes),
        }
        value = metrics[self.cfg.metric.key]
        if self.best is None or value > self.best:  # every supported metric is maximized
            self.best, self.best_epoch, self.best_outputs = value, self.current_epoch, (probs, labels)
        self._epoch.update(metrics)
        self.log(self.cfg.metric.key, value, prog_bar=True, logger=False)

    def on_train_epoch_end(self) -> None:
        """One MLflow row per epoch, stepped by epoch number."""
        self._epoch.update(self._train.summary())
        if "train_images_per_s" in self._epoch:
            self.images_per_s.append(self._epoch["train_images_per_s"])
        if self.logger is not None:
            self.logger.log_metrics(self._epoch, step=self.current_epoch)
        self._epoch = {}

    def configure_optimizers(self):
        total = max(1, int(self.trainer.estimated_stepping_batches))
        opt, sched = recipe.build_optimizer(self.cfg, self.parameters(), total)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class _Running:
    """Training loss, accuracy and images/s of the current epoch, timed over training steps only.

    Sums stay tensors so a GPU step never waits on a host copy.
    """

    def __init__(self):
        self.loss_sum, self.correct, self.seen = 0.0, 0, 0
        self.start = self.end = time.perf_counter()

    def add(self, loss: torch.Tensor, correct: torch.Tensor, n: int) -> None:
        self.loss_sum = self.loss_sum + loss * n
        self.correct = self.correct + correct
        self.seen += n

    def mark(self) -> None:
        self.end = time.perf_counter()

    def summary(self) -> dict[str, float]:
        if not self.seen:
            return {}
        return {
            "train_loss": float(self.loss_sum) / self.seen,
            "train_acc": float(self.correct) / self.seen,
            "train_images_per_s": self.seen / max(self.end - self.start, 1e-9),
        }
