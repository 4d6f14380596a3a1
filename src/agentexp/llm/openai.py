"""OpenAI backend: chat completions (api.openai.com or a compatible server), structured output negotiated."""

from __future__ import annotations

import functools
import json
import logging
import time
from typing import Any

import openai

from agentexp.llm.base import (
    JSON_ONLY,
    LLMError,
    LLMRequest,
    LLMResponse,
    OpenAIConfig,
    StopCheck,
    Usage,
    api_key,
    one_line,
    run_cancellable,
    schema_prompt,
    sdk_error,
)

log = logging.getLogger(__name__)

DEFAULT_MODEL = "gpt-4o-mini"  # used when llm.model is null
DEFAULT_BASE_URL = "https://api.openai.com/v1"
MODES = ("json_schema", "json_object", "text")  # strongest first: what `auto` tries, in order
REFUSAL_WORDS = ("response_format", "json_schema")

# The mode each server accepted, for the rest of this process: the worker's and the mentor's backends
# share a server, and asking again for a refused mode on every call would double each call's cost.
_negotiated: dict[str, str] = {}


def refuses_format(exc: openai.OpenAIError) -> bool:
    """True for an HTTP error about the response format, whatever its status (llama.cpp answers 500)."""
    if not isinstance(exc, openai.APIStatusError):
        return False
    text = f"{exc} {json.dumps(exc.body, default=str)}".lower()
    return any(word in text for word in REFUSAL_WORDS)


class OpenAIBackend:
    """Asks in the strongest structured-output mode the server takes; returns the content verbatim."""

    def __init__(self, cfg: OpenAIConfig) -> None:
        self.cfg = cfg
        self.url = cfg.base_url or DEFAULT_BASE_URL
        self.client = openai.OpenAI(
            api_key=api_key("openai", cfg.api_key_env, cfg.base_url),
            base_url=self.url,
            timeout=cfg.timeout_s,
            max_retries=0,
        )

    def mode(self) -> str:
        """The structured-output mode of the next call."""
        if self.cfg.structured_output != "auto":
            return self.cfg.structured_output
        return _negotiated.get(self.url, MODES[0])

    def params(self, request: LLMRequest, mode: str) -> dict[str, Any]:
        # Without json_schema the schema goes into the system message; llama.cpp's grammar parser
        # crashed on json_object *with* a schema, so json_object is sent bare.
        system = JSON_ONLY if mode == "json_schema" else schema_prompt(request.json_schema)
        # api.openai.com's reasoning models reject max_tokens; compatible servers know only max_tokens.
        limit = "max_completion_tokens" if self.url == DEFAULT_BASE_URL else "max_tokens"
        params: dict[str, Any] = {
            "model": self.cfg.model or DEFAULT_MODEL,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": request.prompt}],
            limit: self.cfg.max_tokens,
        }
        if mode == "json_schema":
            schema = {"name": f"{request.role}_answer", "schema": request.json_schema, "strict": False}
            params["response_format"] = {"type": "json_schema", "json_schema": schema}
        elif mode == "json_object":
            params["response_format"] = {"type": "json_object"}
        if self.cfg.reasoning_effort:
            params["reasoning_effort"] = self.cfg.reasoning_effort
        if self.cfg.web_search:
            params["web_search_options"] = {}
        return params

    def _complete(self, request: LLMRequest, should_stop: StopCheck | None) -> Any:
        """The completion, stepping down from a refused mode when structured_output is auto."""
        while True:
            mode = self.mode()
            params = self.params(request, mode)
            try:
                call = functools.partial(self.client.chat.completions.create, **params)
                return run_cancellable(call, should_stop, "openai backend")
            except openai.OpenAIError as exc:
                if self.cfg.structured_output == "auto" and mode != MODES[-1] and refuses_format(exc):
                    _negotiated[self.url] = fallback = MODES[MODES.index(mode) + 1]
                    log.warning(
                        "%s refuses response_format %s; using %s from now on", self.url, mode, fallback
                    )
                    continue
                raise sdk_error(
                    "openai", openai, exc, self.cfg.timeout_s, self.cfg.api_key_env, self.url
                ) from exc

    def decide(self, request: LLMRequest, should_stop: StopCheck | None = None) -> LLMResponse:
        start = time.monotonic()
        completion = self._complete(request, should_stop)
        if not completion.choices:
            raise LLMError(f"openai backend: {self.url} answered without a choice")
        message = completion.choices[0].message
        if message.content is None:
            raise LLMError(f"openai backend: the model refused: {one_line(message.refusal or 'no content')}")
        tokens = completion.usage  # some local servers report none
        usage = self.cfg.usage(tokens.prompt_tokens, tokens.completion_tokens) if tokens else Usage()
        model = completion.model or self.cfg.model or "unknown"
        return LLMResponse(raw=message.content, usage=usage, latency_s=time.monotonic() - start, model=model)
