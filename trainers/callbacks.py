"""Hydra callbacks of the trainer app."""

from __future__ import annotations

from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from agentexp import tracking


class PrepareTrackingStore(Callback):
    """Create the MLflow schema and experiment once before a multirun's jobs, which then find them ready.

    A single run prepares the store in `train()`; `tracking.prepare_store` serialises independent processes.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        uri = tracking.resolve_uri(config.tracking.uri)
        tracking.ensure_store(uri, tracking.resolve_experiment(config.tracking.experiment))
