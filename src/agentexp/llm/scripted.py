"""Scripted backend: replays a JSONL file of responses, one line per call (tests and audits)."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from agentexp.llm.base import (
    LLMError,
    LLMRequest,
    LLMResponse,
    ScriptedConfig,
    ScriptExhausted,
    StopCheck,
    one_line,
)


class _ScriptUsage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    input_tokens: int = 0
    """Input tokens to report for this line."""
    output_tokens: int = 0
    """Output tokens to report for this line."""


class _ScriptLine(BaseModel):
    model_config = ConfigDict(extra="ignore")
    raw: str
    """Returned verbatim as the model's output."""
    usage: _ScriptUsage = _ScriptUsage()
    """Optional token counts; zeros when absent."""


def load_script(path: Path) -> list[_ScriptLine]:
    """Read every non-blank line of a script; a malformed line is an LLMError naming its number."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise LLMError(f"scripted backend: cannot read script {path}: {exc.strerror or exc}") from exc
    lines = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            lines.append(_ScriptLine.model_validate(json.loads(line)))
        except (json.JSONDecodeError, ValidationError) as exc:
            detail = exc.msg if isinstance(exc, json.JSONDecodeError) else "needs a string field `raw`"
            raise LLMError(f"script {path} line {number} is malformed: {one_line(detail)}") from exc
    return lines


class ScriptedBackend:
    """Returns the script's responses in order; every call (re-asks included) consumes one line."""

    def __init__(self, cfg: ScriptedConfig) -> None:
        self.cfg = cfg
        self._lines = load_script(cfg.script)
        self._next = 0

    def decide(self, request: LLMRequest, should_stop: StopCheck | None = None) -> LLMResponse:
        """The next line; replay is instant, so there is nothing for `should_stop` to cancel."""
        if self._next >= len(self._lines):
            raise ScriptExhausted(f"script {self.cfg.script} exhausted after {len(self._lines)} responses")
        line = self._lines[self._next]
        self._next += 1
        usage = self.cfg.usage(line.usage.input_tokens, line.usage.output_tokens)
        return LLMResponse(raw=line.raw, usage=usage, latency_s=0.0, model=self.cfg.model or "scripted")
