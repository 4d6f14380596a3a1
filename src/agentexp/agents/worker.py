"""AI-Builder: renders the worker prompt and turns the backend's answer into a WorkerDecision."""

from __future__ import annotations

import logging

from pydantic import BaseModel, ConfigDict

from agentexp.agents import CallRecord, ask, prompt_values, render, schema_request
from agentexp.context import Context
from agentexp.decisions import WorkerDecision
from agentexp.gate import GateConfig
from agentexp.llm.base import DEFAULT_RETRY, Backend, RetryPolicy, StopCheck
from agentexp.mission import Mission

log = logging.getLogger(__name__)


class WorkerResult(BaseModel):
    """The worker's answer for one cycle."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    decision: WorkerDecision | None
    """The validated decision, or None when none could be had (the loop then waits)."""
    calls: list[CallRecord]
    """Every backend call, re-asks included."""
    error: str | None
    """Why there is no decision."""


class Worker:
    """Asks the backend for the next step; invalid answers are re-asked with the validation error."""

    def __init__(
        self,
        backend: Backend,
        mission: Mission,
        max_reasks: int = 2,
        retry: RetryPolicy = DEFAULT_RETRY,
        gate: GateConfig | None = None,
    ) -> None:
        self.backend = backend
        self.mission = mission
        self.max_reasks = max_reasks
        self.retry = retry
        self.gate = gate
        """The quality gate's allowlist, shown in the prompt so the worker need not learn it from refusals."""

    def prompt(self, context: Context) -> str:
        """The rendered worker prompt for this context."""
        return render("worker.md.j2", **prompt_values(self.mission, context, self.gate))

    def decide(self, context: Context, should_stop: StopCheck | None = None) -> WorkerResult:
        """One decision (or an error) for the cycle; a stop cancels the call; ScriptExhausted propagates."""
        request = schema_request("worker", self.prompt(context), WorkerDecision, context.structured)
        decision, calls, error = ask(
            self.backend, request, WorkerDecision, self.max_reasks, should_stop, self.retry
        )
        if error:
            log.warning("worker gave no usable decision in cycle %s: %s", context.structured["cycle"], error)
        return WorkerResult(decision=decision, calls=calls, error=error)
