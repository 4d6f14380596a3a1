"""What the worker and mentor share: prompt templates, call records and the bounded re-ask loop."""

from __future__ import annotations

import functools
import json
import re
import time
from pathlib import Path
from typing import Any, TypeVar

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from pydantic import BaseModel, ConfigDict, ValidationError

from agentexp.context import Context
from agentexp.decisions import json_schema
from agentexp.llm.base import JSON_ONLY, Backend, LLMError, LLMRequest, ScriptExhausted, Usage, one_line
from agentexp.mission import Mission

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


def fence(text: str) -> str:
    """`text` as an inert Markdown code block whose fence no backtick run inside it can close."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    marker = "`" * max(3, longest + 1)
    return f"{marker}text\n{text}\n{marker}"


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
    env.filters["tojson_compact"] = lambda value: json.dumps(value, sort_keys=True, default=str)
    return env


def render(template: str, **values: Any) -> str:
    """Render one template of agents/templates/."""
    return environment().get_template(template).render(**values)


def prompt_values(mission: Mission, context: Context) -> dict[str, Any]:
    """The template variables both roles use."""
    structured = context.structured
    return {
        "mission": mission,
        "cycle": structured["cycle"],
        "metric": structured["metric"],
        "signals": structured["signals"],
        "history": structured["history"],
        "active_runs": structured["active_runs"],
        "recent_runs": structured["runs"][-RECENT_RUNS:],
        "leaderboard": context.leaderboard,
        "todo_focus": context.todo_focus,
        "workpad_tail": context.workpad_tail,
        "mentor_notes_tail": context.mentor_notes_tail,
        "storyline": context.storyline,
        "failed_log_tail": context.failed_log_tail,
        "deadline": context.deadline,
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


def ask(
    backend: Backend,
    request: LLMRequest,
    model: type[Parsed],
    max_reasks: int,
) -> tuple[Parsed | None, list[CallRecord], str | None]:
    """Call the backend until its answer validates as `model`, re-asking at most `max_reasks` times.

    Returns (parsed or None, one record per call, error or None). A backend error ends the loop
    without a re-ask; ScriptExhausted propagates so that the loop can stop cleanly.
    """
    calls: list[CallRecord] = []
    prompt, error = request.prompt, "no call made"
    for _ in range(max_reasks + 1):
        started = time.monotonic()
        try:
            response = backend.decide(request.model_copy(update={"prompt": prompt}))
        except ScriptExhausted:
            raise
        except LLMError as exc:
            error = one_line(exc)
            calls.append(
                CallRecord(
                    prompt=prompt, raw="", usage=Usage(), latency_s=time.monotonic() - started, error=error
                )
            )
            return None, calls, error
        record = CallRecord(
            prompt=prompt, raw=response.raw, usage=response.usage, latency_s=response.latency_s
        )
        calls.append(record)
        try:
            return model.model_validate_json(response.raw), calls, None
        except ValidationError as exc:
            error = record.error = describe(exc)
            prompt = reask_prompt(request.prompt, response.raw, error)
    return None, calls, f"invalid output after {len(calls)} calls: {error}"


def schema_request(role: str, prompt: str, model: type[BaseModel], context: dict[str, Any]) -> LLMRequest:
    """The request for one role: prompt, the model's JSON schema and the structured context."""
    return LLMRequest(role=role, prompt=prompt, json_schema=json_schema(model), context=context)
