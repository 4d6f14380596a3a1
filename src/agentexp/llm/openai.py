"""OpenAI backend: chat completions with a JSON schema, for api.openai.com or any compatible server."""

from __future__ import annotations

import time
from typing import Any

import openai

from agentexp.llm.base import (
    JSON_ONLY,
    LLMError,
    LLMRequest,
    LLMResponse,
    OpenAIConfig,
    Usage,
    api_key,
    one_line,
    sdk_error,
)

DEFAULT_MODEL = "gpt-4o-mini"  # used when llm.model is null
DEFAULT_BASE_URL = "https://api.openai.com/v1"


class OpenAIBackend:
    """Sends the prompt with the schema as `response_format` and returns the message content verbatim."""

    def __init__(self, cfg: OpenAIConfig) -> None:
        self.cfg = cfg
        self.url = cfg.base_url or DEFAULT_BASE_URL
        self.client = openai.OpenAI(
            api_key=api_key("openai", cfg.api_key_env, cfg.base_url),
            base_url=self.url,
            timeout=cfg.timeout_s,
            max_retries=0,
        )

    def _params(self, request: LLMRequest) -> dict[str, Any]:
        schema = {"name": f"{request.role}_answer", "schema": request.json_schema, "strict": False}
        params: dict[str, Any] = {
            "model": self.cfg.model or DEFAULT_MODEL,
            "messages": [
                {"role": "system", "content": JSON_ONLY},
                {"role": "user", "content": request.prompt},
            ],
            "response_format": {"type": "json_schema", "json_schema": schema},
        }
        if self.cfg.reasoning_effort:
            params["reasoning_effort"] = self.cfg.reasoning_effort
        if self.cfg.web_search:
            params["web_search_options"] = {}
        return params

    def decide(self, request: LLMRequest) -> LLMResponse:
        start = time.monotonic()
        try:
            completion = self.client.chat.completions.create(**self._params(request))
        except openai.OpenAIError as exc:
            raise sdk_error(
                "openai", openai, exc, self.cfg.timeout_s, self.cfg.api_key_env, self.url
            ) from exc
        if not completion.choices:
            raise LLMError(f"openai backend: {self.url} answered without a choice")
        message = completion.choices[0].message
        if message.content is None:
            raise LLMError(f"openai backend: the model refused: {one_line(message.refusal or 'no content')}")
        tokens = completion.usage  # some local servers report none
        usage = self.cfg.usage(tokens.prompt_tokens, tokens.completion_tokens) if tokens else Usage()
        model = completion.model or self.cfg.model or "unknown"
        return LLMResponse(raw=message.content, usage=usage, latency_s=time.monotonic() - start, model=model)
