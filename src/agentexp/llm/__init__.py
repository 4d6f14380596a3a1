"""LLM backends behind one protocol, built by name from the `llm` config group."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from agentexp.llm.base import (
    AnthropicConfig,
    Backend,
    CodexConfig,
    LLMCancelled,
    LLMConfig,
    LLMError,
    LLMRequest,
    LLMResponse,
    OpenAIConfig,
    PlannerConfig,
    RetryPolicy,
    ScriptedConfig,
    ScriptExhausted,
    StopCheck,
    Usage,
    parse_llm_config,
)

__all__ = [
    "BACKENDS",
    "AnthropicConfig",
    "Backend",
    "CodexConfig",
    "LLMCancelled",
    "LLMConfig",
    "LLMError",
    "LLMRequest",
    "LLMResponse",
    "OpenAIConfig",
    "PlannerConfig",
    "RetryPolicy",
    "ScriptExhausted",
    "ScriptedConfig",
    "StopCheck",
    "Usage",
    "build_backend",
    "parse_llm_config",
]


# Factories import lazily so that choosing one backend never imports another's SDK.
def _planner(cfg: Any, workspace_dir: Path) -> Backend:
    from agentexp.llm.planner import PlannerBackend

    return PlannerBackend(cfg)


def _codex(cfg: Any, workspace_dir: Path) -> Backend:
    from agentexp.llm.codex import CodexBackend

    return CodexBackend(cfg, workspace_dir)


def _openai(cfg: Any, workspace_dir: Path) -> Backend:
    from agentexp.llm.openai import OpenAIBackend

    return OpenAIBackend(cfg)


def _anthropic(cfg: Any, workspace_dir: Path) -> Backend:
    from agentexp.llm.anthropic import AnthropicBackend

    return AnthropicBackend(cfg)


def _scripted(cfg: Any, workspace_dir: Path) -> Backend:
    from agentexp.llm.scripted import ScriptedBackend

    return ScriptedBackend(cfg)


BACKENDS: dict[str, Callable[[Any, Path], Backend]] = {
    "planner": _planner,
    "codex": _codex,
    "openai": _openai,
    "anthropic": _anthropic,
    "scripted": _scripted,
}


def build_backend(cfg: LLMConfig, workspace_dir: Path) -> Backend:
    """The backend named by `cfg.name`; construction errors a user can fix are LLMError."""
    factory = BACKENDS.get(cfg.name)
    if factory is None:
        raise LLMError(f"unknown llm backend {cfg.name!r}; choose one of {', '.join(BACKENDS)}")
    return factory(cfg, Path(workspace_dir))
