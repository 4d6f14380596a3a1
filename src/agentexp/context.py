"""What the agents see each cycle: the structured context for backends plus the prompt-only tails."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from agentexp import ranking, tracking
from agentexp.mission import Mission
from agentexp.signals import CycleSummary, Signals
from agentexp.todos import TodoQueue
from agentexp.workspace import Workspace

WORKPAD_CHARS = 2400  # shared by the workpad's two sections
MENTOR_NOTES_CHARS = 1500
LOG_TAIL_CHARS = 3000
STORYLINE_LINES = 8
HISTORY_CYCLES = 12  # recent cycles in the context; older ones live in MLflow
LEADERBOARD_SIZE = 5
STORYLINE_THRESHOLD = 0.5  # breakout or non-training priority at which the storyline is shown


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


class RunInfo(BaseModel):
    """A training run as the structured context lists it."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    run_id: str
    """MLflow run id."""
    run_label: str
    """The run's label (MLflow run name)."""
    status: Literal["FINISHED", "FAILED", "KILLED", "RUNNING"]
    """MLflow run status."""
    overrides: list[str] = Field(default_factory=list)
    """Hydra overrides the training ran with."""
    metric: float | None = None
    """The summary metric, when the run logged a finite one."""
    cycle: int | None = None
    """Cycle that launched it (None for runs started by hand)."""
    pruned: bool = False
    """Stopped early by the pruner: behind the finished runs at the same epoch."""

    @classmethod
    def from_row(cls, row: dict[str, Any], metric: str) -> RunInfo:
        """A tracking.run_table row; SCHEDULED (not started yet) counts as RUNNING."""
        status = "RUNNING" if row["status"] == "SCHEDULED" else row["status"]
        return cls(
            run_id=row["run_id"],
            run_label=row["run_name"] or row["run_id"],
            status=status,
            overrides=ranking.overrides_of(row),
            metric=_finite(row["metrics"].get(metric)),
            cycle=tracking.cycle_of(row["tags"].get(tracking.CYCLE_TRACE_ID)),
            pruned=row["tags"].get(tracking.PRUNED) == "true",
        )


class Context(BaseModel):
    """One cycle's context: `structured` goes to the backend, the rest only into the prompt."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    structured: dict[str, Any]
    """The CONTRACTS "Structured context" dict (LLMRequest.context)."""
    workpad_tail: str
    """Latest characters of the workpad's sections ('' when empty)."""
    mentor_notes_tail: str
    """Latest characters of the mentor notes."""
    todo_focus: list[str]
    """Oldest and newest open shared TODOs, one line each with their id."""
    storyline: list[str]
    """Latest storyline lines, only while stall or failure signals are high."""
    failed_log_tail: str
    """End of the log of the latest training to end, when it failed (the loop knows which: it saw it end)."""
    leaderboard: list[dict[str, Any]]
    """Top configurations by the mission's metric (seed runs grouped), best first."""
    leaderboard_note: str = ""
    """One sentence when finished runs on another validation split were left out of the leaderboard."""
    deadline: str | None
    """When finish-up is active: the deadline."""


def leaderboard(rows: Sequence[dict[str, Any]], metric: str, direction: str) -> list[dict[str, Any]]:
    """The best configurations (seeds grouped as mean ± std over n runs) as the agents see them."""
    return [
        {
            "rank": e.rank,
            "run_id": e.run_id,
            "run_label": e.run_label,
            "mean": e.mean,
            "std": e.std,
            "n": e.n,
            "overrides": e.overrides,
        }
        for e in ranking.rank(list(rows), metric, direction, LEADERBOARD_SIZE)
    ]


def visible(row: dict[str, Any]) -> dict[str, Any]:
    """A run as an agent may see it: held-out test numbers dropped (they never reach a context)."""
    if not any(tracking.held_out(k) for k in row["metrics"]):
        return row
    return {**row, "metrics": tracking.without_held_out(row["metrics"])}


def _reused(seen: tuple[dict[str, Any], Any] | None, row: dict[str, Any]) -> Any:
    """The earlier conversion of an unchanged row, else None."""
    return seen[1] if seen is not None and seen[0] == row else None


class RunView:
    """Training runs validated and dumped once, shared by every context until the runs change.

    The loop keeps one per list the tracker hands out (a new list only after a training ends), so a cycle
    does not convert thousands of runs again; rows the `previous` view already converted are reused.
    """

    def __init__(self, rows: Sequence[dict[str, Any]], metric: str, previous: RunView | None = None) -> None:
        done = {}
        if previous is not None:
            pairs = zip(previous.rows, previous.dumped, strict=True)
            done = {row["run_id"]: (row, dumped) for row, dumped in pairs}
        rows = [visible(r) for r in rows]
        self.rows, self.metric = rows, metric
        self.dumped = [_reused(done.get(r["run_id"]), r) or self._converted(r) for r in rows]
        self._boards: dict[str, list[dict[str, Any]]] = {}
        self._note: str | None = None

    def _converted(self, row: dict[str, Any]) -> dict[str, Any]:
        return RunInfo.from_row(row, self.metric).model_dump()

    def leaderboard(self, direction: str) -> list[dict[str, Any]]:
        """The best configurations in the metric's direction, computed once per view."""
        if direction not in self._boards:
            self._boards[direction] = leaderboard(self.rows, self.metric, direction)
        return [dict(entry) for entry in self._boards[direction]]

    def leaderboard_note(self) -> str:
        """Why finished runs are missing from the leaderboard (another validation split), else ''."""
        if self._note is None:
            self._note = ranking.split_note(list(self.rows), self.metric)
        return self._note


def stall_is_high(signals: Signals) -> bool:
    """Stall or failure signals high enough that the agents need the storyline."""
    return max(signals.breakout_priority, signals.non_training_priority) >= STORYLINE_THRESHOLD


def _workpad(workspace: Workspace) -> str:
    text = workspace.workpad_tail(WORKPAD_CHARS)
    has_entries = any(line.strip() and not line.startswith("## ") for line in text.splitlines())
    return text.strip() if has_entries else ""


def _todo_focus(workspace: Workspace) -> list[str]:
    items = TodoQueue(workspace.artifacts).focus()
    return [f"#{i.id} ({i.source}, cycle {i.created_cycle}) {i.text}" for i in items]


def build(
    workspace: Workspace,
    runs: RunView | Sequence[dict[str, Any]],
    history: list[CycleSummary],
    signals: Signals,
    mission: Mission,
    cycle: int,
    active_runs: list[str],
    deadline: str | None,
    failed_log_tail: str = "",
    decision: dict[str, Any] | None = None,
    max_concurrent: int = 1,
    code: dict[str, Any] | None = None,
    gpu: list[dict[str, Any]] | None = None,
) -> Context:
    """Assemble the context of `cycle` from the workspace, the runs (tracking.run_table rows, newest last,
    or the loop's RunView of them) and the history; `failed_log_tail` is the log tail of the latest
    training to end when it failed ('' otherwise)."""
    view = runs if isinstance(runs, RunView) else RunView(runs, mission.summary_key)
    board = view.leaderboard(mission.direction)
    recent = [s.model_copy(update={"metric": _finite(s.metric)}) for s in history[-HISTORY_CYCLES:]]
    structured = {
        "cycle": cycle,
        "mission": mission.name,
        "metric": {"key": mission.metric_key, "summary": mission.summary_key, "direction": mission.direction},
        "runs": list(view.dumped),
        "active_runs": list(active_runs),
        "max_concurrent": max_concurrent,
        "code": code or {"enabled": False},
        "gpu": gpu or [],  # one entry per GPU slot: its run, utilisation and memory; empty on CPU
        "leaderboard": board,
        "signals": signals.model_dump(),
        "history": [s.model_dump() for s in recent],
        "deadline": deadline,
        "decision": decision,
    }
    return Context(
        structured=structured,
        workpad_tail=_workpad(workspace),
        mentor_notes_tail=workspace.mentor_notes_tail(MENTOR_NOTES_CHARS).strip(),
        todo_focus=_todo_focus(workspace),
        storyline=workspace.storyline_tail(STORYLINE_LINES) if stall_is_high(signals) else [],
        failed_log_tail=failed_log_tail[-LOG_TAIL_CHARS:].strip(),
        leaderboard=board,
        leaderboard_note=view.leaderboard_note(),
        deadline=deadline,
    )
