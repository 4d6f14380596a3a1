"""What the worker and mentor share: prompt templates, call records and the bounded re-ask loop."""

from __future__ import annotations

import functools
import json
import logging
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from agentexp.context import Context
from agentexp.decisions import json_schema
from agentexp.llm.base import (
    DEFAULT_RETRY,
    JSON_ONLY,
    STOP_POLL_S,
    Backend,
    LLMCancelled,
    LLMError,
    LLMRequest,
    LLMResponse,
    RetryPolicy,
    ScriptExhausted,
    StopCheck,
    Usage,
    one_line,
)
from agentexp.mission import Mission
from agentexp.redact import redact

if TYPE_CHECKING:
    from agentexp.gate import GateConfig

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).parent / "templates"
RECENT_RUNS = 8  # runs listed besides the leaderboard
PREVIOUS_ANSWER_CHARS = 1000  # of an invalid answer, quoted back in a re-ask

Parsed = TypeVar("Parsed", bound=BaseModel)


class CallRecord(BaseModel):
    """One backend call, re-asks included: what was sent, what came back, what went wrong."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    prompt: str
    """The prompt sent."""
    raw: str
    """The model's output verbatim ('' when the call failed)."""
    usage: Usage
    """Tokens and cost."""
    latency_s: float
    """Seconds the call took."""
    error: str | None = None
    """Why the answer was not used (validation or backend error), None when it was."""

    @field_validator("prompt", "raw", "error")
    @classmethod
    def _redacted(cls, text: str | None) -> str | None:
        """Records go to MLflow and the workspace: no secret may ride along."""
        return None if text is None else redact(text)


def fence(text: str) -> str:
    """`text` as an inert Markdown code block whose fence no backtick run inside it can close."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    marker = "`" * max(3, longest + 1)
    return f"{marker}text\n{text}\n{marker}"


def override_value(value: Any) -> str:
    """A value as an override writes it: null, true/false, 1000000, 0.0003, resnet18."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else f"{value:g}"
    return str(value)


@functools.cache
def environment() -> Environment:
    """The Jinja environment of the prompt templates: a missing variable is an error, never ''."""
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        undefined=StrictUndefined,
        autoescape=False,  # Markdown prompts, not HTML; untrusted text goes through `data` instead
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["data"] = fence
    env.filters["override_value"] = override_value
    env.filters["tojson_compact"] = lambda value: json.dumps(value, sort_keys=True, default=str)
    return env


def render(template: str, **values: Any) -> str:
    """Render one template of agents/templates/."""
    return environment().get_template(template).render(**values)


def prompt_values(mission: Mission, context: Context, gate: GateConfig | None = None) -> dict[str, Any]:
    """The template variables both roles use; `gate` is what the quality gate accepts (None: not shown)."""
    structured = context.structured
    return {
        "mission": mission,
        "cycle": structured["cycle"],
        "metric": structured["metric"],
        "signals": structured["signals"],
        "history": structured["history"],
        "active_runs": structured["active_runs"],
        "max_concurrent": structured["max_concurrent"],
        "code": structured["code"],
        "gpu": structured.get("gpu", []),
        "recent_runs": structured["runs"][-RECENT_RUNS:],
        "leaderboard": context.leaderboard,
        "leaderboard_note": context.leaderboard_note,
        "todo_focus": context.todo_focus,
        "workpad_tail": context.workpad_tail,
        "mentor_notes_tail": context.mentor_notes_tail,
        "storyline": context.storyline,
        "failed_log_tail": context.failed_log_tail,
        "deadline": context.deadline,
        "gate": gate,
        "json_only": JSON_ONLY,
    }


def describe(exc: ValidationError) -> str:
    """A validation error as 'field: message' items on one line (input values left out: they can be huge)."""
    items = [f"{'.'.join(map(str, e['loc'])) or '(root)'}: {e['msg']}" for e in exc.errors(include_url=False)]
    return one_line("; ".join(items), limit=1000)


def reask_prompt(prompt: str, raw: str, error: str) -> str:
    """The original prompt with the previous answer and its validation error appended."""
    previous = raw[:PREVIOUS_ANSWER_CHARS] + (" [cut]" if len(raw) > PREVIOUS_ANSWER_CHARS else "")
    return (
        f"{prompt.rstrip()}\n\n## Your previous answer was invalid\n\n{fence(previous)}\n\n"
        f"Validation error: {error}\n\nAnswer again, fixing exactly that. {JSON_ONLY}\n"
    )


def pause(seconds: float, should_stop: StopCheck | None) -> bool:
    """Sleep `seconds`, checking `should_stop`; False as soon as a stop is requested."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if should_stop is not None and should_stop():
            return False
        time.sleep(min(left, STOP_POLL_S))
    return should_stop is None or not should_stop()


def call_backend(backend: Backend, request: LLMRequest, should_stop: StopCheck | None) -> LLMResponse:
    """One backend call; `should_stop` is passed only when given, so backends that predate it still work."""
    if should_stop is None:
        return backend.decide(request)
    return backend.decide(request, should_stop=should_stop)


def attempt(
    backend: Backend, request: LLMRequest, model: type[Parsed], should_stop: StopCheck | None
) -> tuple[CallRecord, Parsed | None, LLMError | None]:
    """One call: its record, the answer when it validates, the backend error when the call failed."""
    started = time.monotonic()
    try:
        response = call_backend(backend, request, should_stop)
    except ScriptExhausted:
        raise
    except LLMError as exc:
        latency = time.monotonic() - started
        failed = CallRecord(
            prompt=request.prompt, raw="", usage=Usage(), latency_s=latency, error=one_line(exc)
        )
        return failed, None, exc
    try:
        parsed, error = model.model_validate_json(response.raw), None
    except ValidationError as exc:
        parsed, error = None, describe(exc)
    record = CallRecord(
        prompt=request.prompt,
        raw=response.raw,
        usage=response.usage,
        latency_s=response.latency_s,
        error=error,
    )
    return record, parsed, None


def ask(
    backend: Backend,
    request: LLMRequest,
    model: type[Parsed],
    max_reasks: int,
    should_stop: StopCheck | None = None,
    retry: RetryPolicy = DEFAULT_RETRY,
) -> tuple[Parsed | None, list[CallRecord], str | None]:
    """Call the backend until its answer validates as `model`.

    An invalid answer is re-asked with its validation error, at most `max_reasks` times. A backend
    error is a failed call too: it is retried with the same prompt after a backoff, at most
    `retry.retries` times. Returns (parsed or None, one record per call, error or None). A cancelled
    call or a stop during a backoff ends at once; ScriptExhausted propagates so the loop stops cleanly.
    """
    calls: list[CallRecord] = []
    base = redact(request.prompt)  # a secret in a log tail must not reach a remote model either
    prompt, reasks, retries = base, 0, 0
    while True:
        record, parsed, failure = attempt(
            backend, request.model_copy(update={"prompt": prompt}), model, should_stop
        )
        calls.append(record)
        if parsed is not None:
            return parsed, calls, None
        if failure is not None:
            if isinstance(failure, LLMCancelled) or retries >= retry.retries:
                return None, calls, record.error
            delay = retry.delay(retries)
            log.warning("%s; retry %d of %d in %.1fs", record.error, retries + 1, retry.retries, delay)
            if not pause(delay, should_stop):
                return None, calls, record.error
            retries += 1
        elif reasks < max_reasks:
            reasks += 1
            prompt = reask_prompt(base, record.raw, str(record.error))
        else:
            return None, calls, f"invalid output after {len(calls)} calls: {record.error}"


def schema_request(role: str, prompt: str, model: type[BaseModel], context: dict[str, Any]) -> LLMRequest:
    """The request for one role: prompt, the model's JSON schema and the structured context."""
    return LLMRequest(role=role, prompt=prompt, json_schema=json_schema(model), context=context)
