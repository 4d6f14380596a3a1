"""The typed events of logs/events.jsonl: one pydantic model per event, one union to read them back."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from agentexp.codebase import Experiment
from agentexp.decisions import MentorReview, WorkerDecision
from agentexp.launchers.base import ActiveRun, RunOutcome
from agentexp.repair import Failure, Repair
from agentexp.signals import CycleSummary


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    ts: float = 0.0
    """Unix time the event was written (the workspace stamps it)."""
    cycle: int
    """The cycle the event belongs to (a training's events belong to the cycle that launched it)."""
    cycle_trace_id: str


class CycleStart(_Event):
    event: Literal["cycle_start"] = "cycle_start"


class CycleEnd(_Event):
    """The commit point of a cycle: a restart counts the cycle done once this is written."""

    event: Literal["cycle_end"] = "cycle_end"
    summary: CycleSummary
    decision_run_id: str
    story: str
    """The cycle's storyline line."""


class LaunchIntent(BaseModel):
    """What a cycle is about to start, written before the process exists."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    run_label: str
    attempt: int
    overrides: list[str]
    parent_run_id: str | None
    run_dir: Path
    decision: WorkerDecision | None = None
    """The decision that launched it (None for a repair retry): a restart completes the cycle with it."""
    code_dir: Path | None = None
    """The code tree it runs (a code experiment's or the incumbent's worktree); None: the checkout."""
    experiment: Experiment | None = None
    """The code experiment it trains (judged keep or discard when it ends)."""
    confirms: bool = False
    """A confirmation run of that experiment with another seed."""
    gpu: int | None = None
    """The GPU its slot holds (CUDA_VISIBLE_DEVICES); None on CPU or under SLURM."""


class Launch(_Event):
    event: Literal["launch"] = "launch"
    run: LaunchIntent


class Launched(_Event):
    event: Literal["launched"] = "launched"
    run: ActiveRun


class RunEnd(_Event):
    event: Literal["run_end"] = "run_end"
    run: RunOutcome
    run_dir: Path | None = None
    """The run's unique folder: which launch ended."""


class CodeOutcome(_Event):
    """A code experiment judged: kept (the incumbent moved to it), discarded, failed, or confirming."""

    event: Literal["code_outcome"] = "code_outcome"
    run_label: str
    outcome: Literal["kept", "discarded", "failed", "confirming"]
    commit: str
    why: str


class MentorRecord(BaseModel):
    """What the mentor did in a cycle."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    trigger: str
    review: MentorReview | None
    error: str | None
    replaced: bool
    """Its replacement took the worker's place."""


class MentorEvent(_Event):
    event: Literal["mentor"] = "mentor"
    mentor: MentorRecord


class QualityGate(_Event):
    event: Literal["quality_gate"] = "quality_gate"
    quality_gate: list[str]
    """The gate's reasons, one sentence each."""


class AutoRepair(_Event):
    event: Literal["auto_repair"] = "auto_repair"
    run_label: str
    failure: Failure
    repair: Repair | None
    error: str | None
    retried: bool


class RetryOutcome(_Event):
    event: Literal["run_outcome_retry"] = "run_outcome_retry"
    run: RunOutcome


class StaleOrphan(_Event):
    event: Literal["stale_orphan"] = "stale_orphan"
    run_label: str
    pid: int
    idle_cycles: int
    stopped: bool


class FinishUpDone(_Event):
    event: Literal["finish_up"] = "finish_up"
    files: list[str]
    error: str | None
    stopped: list[str]
    """Labels of the trainings stopped at the deadline."""


Event = Annotated[
    CycleStart
    | CycleEnd
    | Launch
    | Launched
    | RunEnd
    | MentorEvent
    | QualityGate
    | AutoRepair
    | RetryOutcome
    | StaleOrphan
    | FinishUpDone
    | CodeOutcome,
    Field(discriminator="event"),
]
EVENT: TypeAdapter[Event] = TypeAdapter(Event)
