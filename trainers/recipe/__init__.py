"""The editable recipe: what a code experiment may change, called by the protected harness.

The harness (data loading and the validation split, evaluation and metrics, MLflow tracking, the fit loop)
calls exactly these builders; a patch may rewrite how each one works, not the harness around them:

- `build_model(cfg, num_classes)` -> the network (an `nn.Module` mapping images to class logits)
- `train_transform(cfg)` / `val_transform(cfg)` -> per-image transforms (uint8 image -> float tensor)
- `batch_mix(cfg, num_classes)` -> a batch transform of (images, labels) during training, or None
- `build_loss(cfg, class_weights)` -> loss(logits, targets); targets are class indices, or soft labels
  when `batch_mix` mixes
- `build_optimizer(cfg, params, total_steps)` -> (optimizer, scheduler stepped once per training step)

Each receives the validated `TrainConfig` (trainers/config.py): knob decisions change the config, code
decisions change these files.
"""

from trainers.recipe.loss import build_loss
from trainers.recipe.model import build_model
from trainers.recipe.optim import build_optimizer
from trainers.recipe.transforms import batch_mix, train_transform, val_transform

__all__ = ["batch_mix", "build_loss", "build_model", "build_optimizer", "train_transform", "val_transform"]
