"""Hydra callbacks of the trainer app."""

from __future__ import annotations

from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from agentexp import tracking


class PrepareTrackingStore(Callback):
    """Create the MLflow schema and experiment once, before any job: parallel jobs then cannot race on it."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._prepare(config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._prepare(config)

    @staticmethod
    def _prepare(config: DictConfig) -> None:
        uri = tracking.resolve_uri(config.tracking.uri)
        tracking.ensure_store(uri, tracking.resolve_experiment(config.tracking.experiment))
