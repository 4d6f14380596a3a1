"""The LLM backend protocol: request/response models, errors and the backend configs."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any, Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from agentexp import redact

JSON_ONLY = "Reply with exactly one JSON object that matches the JSON schema: no prose, no code fences."
STOP_POLL_S = 0.1  # how often a running call checks whether a stop was requested

StopCheck = Callable[[], bool]
"""Returns True once the loop wants to stop: a call in flight is then cancelled."""
Result = TypeVar("Result")


class LLMError(Exception):
    """A backend could not produce an answer; the message is one user-readable line, secrets redacted."""

    def __init__(self, message: str) -> None:
        super().__init__(redact.redact(message))


class ScriptExhausted(LLMError):
    """The scripted backend ran out of responses: the loop stops cleanly."""


class LLMCancelled(LLMError):
    """The call was abandoned because a stop was requested; never retried."""


def schema_prompt(schema: dict[str, Any]) -> str:
    """The system message of a backend that cannot enforce the schema itself: JSON only, and the schema."""
    return f"{JSON_ONLY}\n\nJSON schema:\n{json.dumps(schema)}"


def run_cancellable(call: Callable[[], Result], should_stop: StopCheck | None, what: str) -> Result:
    """`call()`, abandoned with LLMCancelled as soon as `should_stop()` turns true.

    The call runs in a daemon thread; a cancelled one is left to end on its own (its client timeout
    bounds it) and its result is dropped. The HTTP SDKs offer no way to interrupt a blocked read
    from another thread, and the loop exits right after a stop, which closes the connection.
    """
    if should_stop is None:
        return call()
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = call()
        except BaseException as exc:  # handed to the caller's thread below
            outcome["error"] = exc

    worker = threading.Thread(target=target, name=f"llm-{what}", daemon=True)
    worker.start()
    while worker.is_alive():
        if should_stop():
            raise LLMCancelled(f"{what}: call cancelled, a stop was requested")
        worker.join(STOP_POLL_S)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def api_key(backend: str, env_var: str, base_url: str | None) -> str:
    """The key from `env_var`; a placeholder when a base_url points at a server that may not check it."""
    redact.watch_env(env_var)  # whatever it is called, its value never reaches a log or the store
    key = os.environ.get(env_var)
    if key:
        return key
    if base_url:
        return "not-needed"  # local and proxy servers accept any key
    raise LLMError(f"{backend} backend: set {env_var} (or llm.base_url for a local server)")


def sdk_error(
    backend: str, sdk: ModuleType, exc: Exception, timeout_s: float, env_var: str, url: str
) -> LLMError:
    """One line saying what went wrong and where; the OpenAI and Anthropic SDKs share these classes."""
    if isinstance(exc, sdk.APITimeoutError):
        return LLMError(f"{backend} backend: no answer from {url} within {timeout_s:g}s")
    if isinstance(exc, sdk.APIConnectionError):
        return LLMError(f"{backend} backend: cannot reach {url}: {one_line(exc.__cause__ or exc)}")
    if isinstance(exc, sdk.AuthenticationError):
        return LLMError(f"{backend} backend: HTTP 401 from {url} (check {env_var}): {one_line(exc)}")
    if isinstance(exc, sdk.APIStatusError):
        return LLMError(f"{backend} backend: HTTP {exc.status_code} from {url}: {one_line(exc)}")
    return LLMError(f"{backend} backend: {type(exc).__name__}: {one_line(exc)}")


def one_line(text: object, limit: int = 300) -> str:
    """Collapse whitespace so an error message stays on one line, cut to `limit` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class Usage(_Model):
    input_tokens: int = 0
    """Prompt tokens billed for the call (cached ones included)."""
    output_tokens: int = 0
    """Completion tokens billed for the call."""
    cost_usd: float = 0.0
    """Tokens times the configured prices."""


class LLMRequest(_Model):
    role: Literal["worker", "mentor"]
    """Which agent asks."""
    prompt: str
    """The rendered prompt."""
    json_schema: dict[str, Any]
    """JSON schema of the expected output."""
    context: dict[str, Any] = {}
    """Structured context (runs, signals, history); offline backends reason from it."""


class LLMResponse(_Model):
    raw: str
    """The model's output, verbatim."""
    usage: Usage
    """Tokens and cost of this call."""
    latency_s: float
    """Wall-clock seconds the call took."""
    model: str
    """The model that answered."""


class Backend(Protocol):
    """Anything that answers a request with a raw response.

    `should_stop` is polled while the call runs; when it turns true the call is abandoned with
    LLMCancelled. A backend that answers at once accepts it and ignores it.
    """

    def decide(self, request: LLMRequest, should_stop: StopCheck | None = None) -> LLMResponse: ...


class RetryPolicy(_Model):
    """How often a call that failed with a backend error is tried again, and how long to wait first."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, frozen=True)

    retries: int = Field(default=2, ge=0, le=10)
    """Retries of a call that failed (HTTP error, timeout, codex exit); 0 = none."""
    backoff_s: float = Field(default=2.0, ge=0, le=60)
    """Seconds before the first retry; doubled before each further one."""

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number `retry` (0-based)."""
        return self.backoff_s * 2**retry


DEFAULT_RETRY = RetryPolicy()


class _Common(_Model):
    model: str | None = None
    """Model name; null = the backend's default."""
    reasoning_effort: Literal["low", "medium", "high"] | None = None
    """Reasoning effort for models that support it; null = provider default."""
    web_search: bool = False
    """Let the model search the web where the backend supports it."""
    timeout_s: float = Field(default=120.0, gt=0)
    """Seconds one call may take before it fails with a clear error."""
    max_tokens: int = Field(default=2048, gt=0)
    """Most tokens one answer may have, so a rambling model stops (openai, anthropic; `codex exec`
    has no such setting and is bounded by timeout_s; the offline backends generate no tokens)."""
    retry: RetryPolicy = RetryPolicy()
    """Retries with backoff after a backend error, before the cycle waits."""
    input_cost_per_mtok: float = Field(default=0.0, ge=0)
    """USD per million input tokens."""
    output_cost_per_mtok: float = Field(default=0.0, ge=0)
    """USD per million output tokens."""

    def usage(self, input_tokens: int, output_tokens: int) -> Usage:
        """Usage with its cost at the configured prices."""
        cost = (input_tokens * self.input_cost_per_mtok + output_tokens * self.output_cost_per_mtok) / 1e6
        return Usage(input_tokens=input_tokens, output_tokens=output_tokens, cost_usd=cost)


class PlannerConfig(_Common):
    name: Literal["planner"] = "planner"
    """Offline Optuna planner: no network."""
    space: dict[str, Any] = {}
    """Search space the planner proposes from."""
    n_startup_trials: int = 4
    """Trials sampled at random before TPE takes over."""
    seed: int = 0
    """Sampler seed."""


class CodexConfig(_Common):
    name: Literal["codex"] = "codex"
    """`codex exec` subprocess."""
    binary: str = "codex"
    """Codex CLI executable (looked up on PATH)."""
    codex_home: Path | None = None
    """CODEX_HOME holding the login; null = <workspace>/codex_home."""
    sandbox: Literal["read-only"] = "read-only"
    """Codex sandbox mode; the loop only reads."""


class OpenAIConfig(_Common):
    name: Literal["openai"] = "openai"
    """OpenAI SDK, any OpenAI-compatible server."""
    base_url: str | None = None
    """API base URL (Ollama, vLLM, llama.cpp); null = api.openai.com."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the API key; local servers accept any key."""
    structured_output: Literal["auto", "json_schema", "json_object", "text"] = "auto"
    """How the answer is constrained: auto tries json_schema, then json_object, then text, falling back
    when the server refuses a mode (llama.cpp's server refuses json_schema)."""


class AnthropicConfig(_Common):
    name: Literal["anthropic"] = "anthropic"
    """Anthropic SDK."""
    base_url: str | None = None
    """API base URL; null = api.anthropic.com."""
    api_key_env: str = "ANTHROPIC_API_KEY"
    """Environment variable holding the API key."""


class ScriptedConfig(_Common):
    name: Literal["scripted"] = "scripted"
    """Replays a JSONL file of responses."""
    script: Path
    """JSONL file: one object per line whose `raw` is returned verbatim."""


LLMConfig = Annotated[
    PlannerConfig | CodexConfig | OpenAIConfig | AnthropicConfig | ScriptedConfig,
    Field(discriminator="name"),
]
_ADAPTER: TypeAdapter[LLMConfig] = TypeAdapter(LLMConfig)


def parse_llm_config(data: dict[str, Any]) -> LLMConfig:
    """Validate a plain dict (e.g. a composed `llm` group) into the matching backend config."""
    return _ADAPTER.validate_python(data)
