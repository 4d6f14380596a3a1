"""How a training process runs: one launcher per place (local processes, SLURM jobs), one protocol."""

from __future__ import annotations

from agentexp.launchers.base import (
    ActiveRun,
    Handle,
    Launcher,
    LauncherError,
    LaunchSpec,
    RunOutcome,
)

__all__ = ["ActiveRun", "Handle", "LaunchSpec", "Launcher", "LauncherError", "RunOutcome"]
