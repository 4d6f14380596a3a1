"""AI-Mentor: when to review (cadence, stuck, health check), the review itself, and applying it."""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from agentexp.agents import CallRecord, ask, prompt_values, render, schema_request
from agentexp.context import Context
from agentexp.decisions import MentorReview, WorkerDecision
from agentexp.gate import GateConfig
from agentexp.llm.base import DEFAULT_RETRY, Backend, RetryPolicy, StopCheck
from agentexp.mission import Mission
from agentexp.signals import CycleSummary, Signals, same_dimension_streak

log = logging.getLogger(__name__)

Trigger = Literal["cadence", "stuck", "health"]
HEALTH_WINDOW = 6  # recent cycles a health check reviews
REPEAT_MIN = 3  # same action or dimension this many times in a row counts as a repeat
STALL_MIN = 3  # cycles without improvement that count as a stall


class MentorConfig(BaseModel):
    """conf/loop.yaml `mentor:` section."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    enabled: bool = True
    """Review the worker at all."""
    every_n_cycles: int = Field(4, ge=1)
    """Standard mode: review every N cycles."""
    interaction_mode: Literal["standard", "builder_health_helper"] = "standard"
    """standard: cadence reviews; builder_health_helper: health checks of the last decisions instead."""
    health_every_n_cycles: int = Field(3, ge=1)
    """builder_health_helper mode: a health check every M cycles."""
    apply_suggestions: bool = True
    """An off_track review's replacement decision replaces the worker's."""
    min_idle_streak_for_stuck: int = Field(2, ge=1)
    """Idle cycles in a row before a stuck-triggered review."""
    max_reasks: int = Field(2, ge=0)
    """Re-asks after an invalid review."""


class MentorResult(BaseModel):
    """The mentor's answer for one cycle."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    review: MentorReview | None
    """The validated review, or None when none could be had (the worker's decision stands)."""
    calls: list[CallRecord]
    """Every backend call, re-asks included."""
    error: str | None
    """Why there is no review."""
    trigger: str
    """What made the review due: cadence, stuck or health."""


def _repeated_configs(runs: list[dict[str, Any]]) -> list[str]:
    groups: dict[tuple[str, ...], list[str]] = defaultdict(list)
    for run in runs[-20:]:
        groups[tuple(sorted(run["overrides"]))].append(run["run_label"])
    return [", ".join(labels) for labels in groups.values() if len(labels) > 1]


def health_findings(structured: dict[str, Any]) -> list[str]:
    """Repeats, stalls and failed runs among the latest cycles, one sentence each."""
    history = [CycleSummary.model_validate(h) for h in structured["history"]][-HEALTH_WINDOW:]
    findings = []
    actions = [h.action for h in history[-REPEAT_MIN:]]
    if len(actions) == REPEAT_MIN and len(set(actions)) == 1:
        findings.append(f"the last {REPEAT_MIN} cycles all chose {actions[0]}")
    streak = same_dimension_streak(history)
    if streak >= REPEAT_MIN:
        dim = [h.strategy_dimension for h in history if h.strategy_dimension][-1]
        findings.append(f"the last {streak} trainings all changed {dim}")
    findings += [
        f"runs with identical overrides: {labels}" for labels in _repeated_configs(structured["runs"])
    ]
    stall = structured["signals"]["stall_cycles"]
    if stall >= STALL_MIN:
        findings.append(f"the best metric has not improved for {stall} cycles")
    failed = [h.run_label or f"cycle {h.cycle}" for h in history if h.outcome in ("failed", "downgraded")]
    if failed:
        findings.append(f"failed or rejected in the last {len(history)} cycles: {', '.join(failed)}")
    return findings or [f"no repeats, stalls or failures in the last {len(history)} cycles"]


class Mentor:
    """Reviews the worker's decision when due; the review may challenge and replace it."""

    def __init__(
        self,
        backend: Backend,
        mission: Mission,
        cfg: MentorConfig,
        retry: RetryPolicy = DEFAULT_RETRY,
        gate: GateConfig | None = None,
    ) -> None:
        self.backend = backend
        self.mission = mission
        self.cfg = cfg
        self.retry = retry
        self.gate = gate
        """The quality gate's allowlist, which a replacement decision must pass too."""

    def due(
        self, cycle: int, signals: Signals, worker_busy: bool, idle_streak: int, new_evidence: bool
    ) -> Trigger | None:
        """Why a review is due this cycle, or None (pure).

        stuck: an idle streak of at least `min_idle_streak_for_stuck`, with new evidence since the
        last review, and not while the worker's runs are training. Otherwise the mode's schedule:
        every `every_n_cycles` (standard) or a health check every `health_every_n_cycles`.
        `signals` already shaped the worker's choice; the cadence does not depend on them.
        """
        if not self.cfg.enabled:
            return None
        if idle_streak >= self.cfg.min_idle_streak_for_stuck and new_evidence and not worker_busy:
            return "stuck"
        if self.cfg.interaction_mode == "builder_health_helper":
            return "health" if cycle % self.cfg.health_every_n_cycles == 0 else None
        return "cadence" if cycle % self.cfg.every_n_cycles == 0 else None

    def prompt(self, decision: WorkerDecision, context: Context, trigger: str) -> str:
        """The rendered mentor prompt."""
        structured = {**context.structured, "decision": decision.model_dump(mode="json")}
        findings = health_findings(structured) if trigger == "health" else []
        values = prompt_values(self.mission, context, self.gate)
        decision_json = json.dumps(structured["decision"], indent=2)
        return render(
            "mentor.md.j2", **values, trigger=trigger, findings=findings, decision_json=decision_json
        )

    def review(
        self, decision: WorkerDecision, context: Context, trigger: str, should_stop: StopCheck | None = None
    ) -> MentorResult:
        """One review of `decision` (or an error); a stop cancels the call; ScriptExhausted propagates."""
        structured = {**context.structured, "decision": decision.model_dump(mode="json")}
        request = schema_request("mentor", self.prompt(decision, context, trigger), MentorReview, structured)
        review, calls, error = ask(
            self.backend, request, MentorReview, self.cfg.max_reasks, should_stop, self.retry
        )
        if error:
            log.warning("mentor gave no usable review in cycle %s: %s", structured["cycle"], error)
        return MentorResult(review=review, calls=calls, error=error, trigger=trigger)


def apply_review(
    decision: WorkerDecision, review: MentorReview | None, cfg: MentorConfig
) -> tuple[WorkerDecision, bool]:
    """The decision to execute and whether the mentor's replacement took the worker's place."""
    if review and review.verdict == "off_track" and cfg.apply_suggestions and review.replacement:
        return review.replacement, True
    return decision, False


def review_todo(review: MentorReview | None) -> str | None:
    """The TODO a review adds to the queue: only a challenge adds one; continue adds none."""
    return review.todo if review and review.verdict == "off_track" and review.todo else None
