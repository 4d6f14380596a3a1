"""Anthropic backend: the Messages API with the JSON schema in the system prompt."""

from __future__ import annotations

import time
from typing import Any

import anthropic

from agentexp.llm.base import (
    AnthropicConfig,
    LLMError,
    LLMRequest,
    LLMResponse,
    StopCheck,
    api_key,
    run_cancellable,
    schema_prompt,
    sdk_error,
)

DEFAULT_MODEL = "claude-sonnet-4-5"  # used when llm.model is null
DEFAULT_BASE_URL = "https://api.anthropic.com"
WEB_SEARCH_TOOL = {"type": "web_search_20250305", "name": "web_search", "max_uses": 5}


class AnthropicBackend:
    """Asks for JSON only and returns the text blocks of the answer verbatim."""

    def __init__(self, cfg: AnthropicConfig) -> None:
        self.cfg = cfg
        self.url = cfg.base_url or DEFAULT_BASE_URL
        self.client = anthropic.Anthropic(
            api_key=api_key("anthropic", cfg.api_key_env, cfg.base_url),
            base_url=self.url,
            timeout=cfg.timeout_s,
            max_retries=0,
        )

    def _params(self, request: LLMRequest) -> dict[str, Any]:
        params: dict[str, Any] = {
            "model": self.cfg.model or DEFAULT_MODEL,
            "max_tokens": self.cfg.max_tokens,
            "system": schema_prompt(request.json_schema),
            "messages": [{"role": "user", "content": request.prompt}],
        }
        if self.cfg.reasoning_effort:
            params["output_config"] = {"effort": self.cfg.reasoning_effort}
        if self.cfg.web_search:
            params["tools"] = [WEB_SEARCH_TOOL]
        return params

    def decide(self, request: LLMRequest, should_stop: StopCheck | None = None) -> LLMResponse:
        start = time.monotonic()
        params = self._params(request)
        try:
            message = run_cancellable(
                lambda: self.client.messages.create(**params), should_stop, "anthropic backend"
            )
        except anthropic.AnthropicError as exc:
            raise sdk_error(
                "anthropic", anthropic, exc, self.cfg.timeout_s, self.cfg.api_key_env, self.url
            ) from exc
        text = "".join(block.text for block in message.content if block.type == "text")
        if not text:
            raise LLMError(f"anthropic backend: answer without text (stop_reason {message.stop_reason})")
        usage = self.cfg.usage(message.usage.input_tokens, message.usage.output_tokens)
        model = message.model or self.cfg.model or "unknown"
        return LLMResponse(raw=text, usage=usage, latency_s=time.monotonic() - start, model=model)
