"""The network: a timm model by the config's name."""

from __future__ import annotations

import difflib

import timm
from torch import nn

from trainers.config import TrainConfig, UserError


def build_model(cfg: TrainConfig, num_classes: int) -> nn.Module:
    """A timm model by name; an unknown name is a UserError listing close matches."""
    model = cfg.model
    if not timm.is_model(model.name):
        close = difflib.get_close_matches(model.name, timm.list_models(), n=5, cutoff=0.6)
        hint = f"close matches: {', '.join(close)}" if close else "see timm.list_models()"
        raise UserError(f"Unsupported model.name '{model.name}': not a timm model ({hint})")
    kwargs = {"num_classes": num_classes, "drop_rate": model.drop_rate}
    if model.pretrained:
        if not model.checkpoint_path.is_file():
            raise UserError(f"model.checkpoint_path {model.checkpoint_path} does not exist")
        # timm loads the local file and drops a classifier whose class count differs
        kwargs["pretrained_cfg_overlay"] = {"file": str(model.checkpoint_path)}
    return timm.create_model(model.name, pretrained=model.pretrained, **kwargs)
