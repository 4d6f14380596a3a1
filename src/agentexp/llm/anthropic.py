"""Anthropic backend: the Messages API with the JSON schema in the system prompt."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import anthropic

from agentexp.llm.base import JSON_ONLY, AnthropicConfig, LLMError, LLMRequest, LLMResponse, one_line

DEFAULT_MODEL = "claude-sonnet-4-5"  # used when llm.model is null
DEFAULT_BASE_URL = "https://api.anthropic.com"
WEB_SEARCH_TOOL = {"type": "web_search_20250305", "name": "web_search", "max_uses": 5}


def _api_key(cfg: AnthropicConfig) -> str:
    key = os.environ.get(cfg.api_key_env)
    if key:
        return key
    if cfg.base_url:
        return "not-needed"  # a local or proxy server may not check it
    raise LLMError(f"anthropic backend: set {cfg.api_key_env}")


def _error(exc: anthropic.AnthropicError, cfg: AnthropicConfig, url: str) -> LLMError:
    """One line that says what went wrong and where."""
    if isinstance(exc, anthropic.APITimeoutError):
        return LLMError(f"anthropic backend: no answer from {url} within {cfg.timeout_s:g}s")
    if isinstance(exc, anthropic.APIConnectionError):
        return LLMError(f"anthropic backend: cannot reach {url}: {one_line(exc.__cause__ or exc)}")
    if isinstance(exc, anthropic.AuthenticationError):
        return LLMError(f"anthropic backend: HTTP 401 from {url} (check {cfg.api_key_env}): {one_line(exc)}")
    if isinstance(exc, anthropic.APIStatusError):
        return LLMError(f"anthropic backend: HTTP {exc.status_code} from {url}: {one_line(exc)}")
    return LLMError(f"anthropic backend: {type(exc).__name__}: {one_line(exc)}")


class AnthropicBackend:
    """Asks for JSON only and returns the text blocks of the answer verbatim."""

    def __init__(self, cfg: AnthropicConfig) -> None:
        self.cfg = cfg
        self.url = cfg.base_url or DEFAULT_BASE_URL
        self.client = anthropic.Anthropic(
            api_key=_api_key(cfg), base_url=self.url, timeout=cfg.timeout_s, max_retries=0
        )

    def _params(self, request: LLMRequest) -> dict[str, Any]:
        system = f"{JSON_ONLY}\n\nJSON schema:\n{json.dumps(request.json_schema)}"
        params: dict[str, Any] = {
            "model": self.cfg.model or DEFAULT_MODEL,
            "max_tokens": self.cfg.max_tokens,
            "system": system,
            "messages": [{"role": "user", "content": request.prompt}],
        }
        if self.cfg.reasoning_effort:
            params["output_config"] = {"effort": self.cfg.reasoning_effort}
        if self.cfg.web_search:
            params["tools"] = [WEB_SEARCH_TOOL]
        return params

    def decide(self, request: LLMRequest) -> LLMResponse:
        start = time.monotonic()
        try:
            message = self.client.messages.create(**self._params(request))
        except anthropic.AnthropicError as exc:
            raise _error(exc, self.cfg, self.url) from exc
        text = "".join(block.text for block in message.content if block.type == "text")
        if not text:
            raise LLMError(f"anthropic backend: answer without text (stop_reason {message.stop_reason})")
        usage = self.cfg.usage(message.usage.input_tokens, message.usage.output_tokens)
        model = message.model or self.cfg.model or "unknown"
        return LLMResponse(raw=text, usage=usage, latency_s=time.monotonic() - start, model=model)
