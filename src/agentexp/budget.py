"""The loop's budgets (hours, trainings, LLM calls, cost) and which one a session has spent: pure."""

from __future__ import annotations

from agentexp.config import LoopSettings
from agentexp.workspace import State


def spent(settings: LoopSettings, state: State, trainings: float, hours_run: float) -> str | None:
    """The stop reason of the first budget used up, else None. `trainings` counts a pruned training as the
    share of its epochs it ran; a new one is launched only while a whole one still fits."""
    if settings.run_hours and hours_run >= settings.run_hours:
        return "run_hours"
    if settings.max_trainings and trainings + 1 > settings.max_trainings + 1e-9:
        return "max_trainings"  # the trainings still running finish before the loop exits
    if settings.max_llm_calls and state.llm_calls >= settings.max_llm_calls:
        return "llm_call_budget"
    if settings.max_cost_usd and state.cost_usd >= settings.max_cost_usd:
        return "cost_budget"
    return None
