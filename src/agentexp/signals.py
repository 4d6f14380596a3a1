"""Priority signals computed from the cycle history: they guide the agents, never force them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict

Outcome = Literal["launched", "finished", "failed", "waited", "downgraded", "analyzed", "finished_loop"]
Direction = Literal["maximize", "minimize"]

STALL_SCALE = 6  # trainings without improvement at which the stall part of breakout saturates
REPEAT_SCALE = 3  # extra same-dimension trainings in a row at which repetition saturates
EARLY_CYCLES = 6  # cycles during which research starts high and fades
DIMENSIONS_WANTED = 5  # distinct strategy dimensions after which research no longer asks for more
FAIL_SCALE = 3  # consecutive failed/rejected attempts at which non-training saturates
FREE_TRAININGS = 3  # trainings allowed since the last analysis before non-training rises
TRAINING_SCALE = 6  # further trainings at which that part saturates
TODO_SCALE = 10  # open TODOs at full pressure

_TRAINED: set[str] = {"launched", "finished", "failed"}


class CycleSummary(BaseModel):
    """What one completed cycle did, as the signals see it."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    cycle: int
    """1-based cycle number."""
    action: str
    """The worker's action after the gate (train, wait, analyze, finish)."""
    run_label: str | None = None
    """Label of the run the cycle launched, if any."""
    strategy_dimension: str | None = None
    """Dimension a training cycle explored."""
    outcome: Outcome
    """What happened."""
    metric: float | None = None
    """Best summary metric of a run that finished during the cycle."""


class Signals(BaseModel):
    """Priorities in [0, 1] plus the stall length; logged as decision params and shown to the agents."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    research_priority: float
    """Explore untried strategy dimensions (high early and when few were tried)."""
    non_training_priority: float
    """Step back from training (after failures or many trainings without analysis)."""
    breakout_priority: float
    """Try something different (after a stall, more so on one repeated dimension)."""
    todo_pressure: float
    """How much the open TODO backlog asks for attention."""
    stall_cycles: int
    """Cycles since the best metric last improved (waits included)."""
    stall_trainings: int = 0
    """Trainings launched since the best metric last improved: what a stall costs (breakout uses it)."""


def _clamp(value: float) -> float:
    return round(min(1.0, max(0.0, value)), 4)


def _last_improved(history: Sequence[CycleSummary], direction: Direction) -> int:
    """How many cycles lie up to the one that last improved the best metric (all of them while no run has
    a metric yet)."""
    sign = 1.0 if direction == "maximize" else -1.0
    best, last_improved = None, len(history)
    for index, summary in enumerate(history, 1):
        if summary.metric is None:
            continue
        if best is None or sign * summary.metric > sign * best:
            best, last_improved = summary.metric, index
    return last_improved


def stall_cycles(history: Sequence[CycleSummary], direction: Direction = "maximize") -> int:
    """Cycles after the one that last improved the best metric (0 while no run has a metric yet)."""
    return len(history) - _last_improved(history, direction)


def stall_trainings(history: Sequence[CycleSummary], direction: Direction = "maximize") -> int:
    """Trainings launched after the cycle that last improved the best metric: waits and analyses do not
    count, so a stall is measured in the budget it spent (0 while no run has a metric yet)."""
    return len(_trainings(history[_last_improved(history, direction) :]))


def _is_training(summary: CycleSummary) -> bool:
    return summary.action == "train" and summary.outcome in _TRAINED


def _trainings(history: Sequence[CycleSummary]) -> list[CycleSummary]:
    return [s for s in history if _is_training(s)]


def same_dimension_streak(history: Sequence[CycleSummary]) -> int:
    """How many of the latest trainings in a row share the last training's strategy dimension."""
    dims = [s.strategy_dimension for s in _trainings(history)]
    streak = 0
    for dim in reversed(dims):
        if dim is None or dim != dims[-1]:
            break
        streak += 1
    return streak


def failure_streak(history: Sequence[CycleSummary]) -> int:
    """Failed runs and gate rejections since the last run that finished."""
    streak = 0
    for summary in reversed(history):
        if summary.outcome == "finished":
            break
        streak += summary.outcome in ("failed", "downgraded")
    return streak


def trainings_since_analysis(history: Sequence[CycleSummary]) -> int:
    """Training cycles since the last analyze cycle (or since the start)."""
    count = 0
    for summary in reversed(history):
        if summary.outcome == "analyzed":
            break
        count += _is_training(summary)
    return count


def compute(history: Sequence[CycleSummary], open_todos: int, direction: Direction = "maximize") -> Signals:
    """All signals for the next cycle from the completed cycles (oldest first)."""
    stall = stall_trainings(history, direction)
    distinct = {s.strategy_dimension for s in _trainings(history) if s.strategy_dimension}
    # breakout: mostly the stall, partly repeating one dimension
    stall_part = stall / STALL_SCALE
    repeat_part = (same_dimension_streak(history) - 1) / REPEAT_SCALE
    breakout = 0.7 * _clamp(stall_part) + 0.3 * _clamp(repeat_part)
    # research: whichever is higher of "still early" and "few dimensions tried"
    research = max(1 - len(history) / EARLY_CYCLES, 1 - len(distinct) / DIMENSIONS_WANTED)
    # non-training: whichever is higher of "failing in a row" and "training without analysing"
    failing = failure_streak(history) / FAIL_SCALE
    unanalysed = (trainings_since_analysis(history) - FREE_TRAININGS) / TRAINING_SCALE
    return Signals(
        research_priority=_clamp(research),
        non_training_priority=_clamp(max(failing, unanalysed)),
        breakout_priority=_clamp(breakout),
        todo_pressure=_clamp(open_todos / TODO_SCALE),
        stall_cycles=stall_cycles(history, direction),
        stall_trainings=stall,
    )
