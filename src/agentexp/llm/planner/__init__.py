"""Offline planner backend: Optuna TPE proposals over a search space and a rule-based mentor."""

from __future__ import annotations

import json
import time

import optuna
from pydantic import ValidationError

from agentexp.llm.base import LLMError, LLMRequest, LLMResponse, PlannerConfig, Usage
from agentexp.llm.planner.evidence import PlannerContext
from agentexp.llm.planner.policy import Planner
from agentexp.llm.planner.space import SearchSpace

__all__ = ["PlannerBackend"]

MODEL_NAME = "planner"


class PlannerBackend:
    """Offline backend: answers worker requests with Optuna proposals and mentor requests with rules."""

    def __init__(self, cfg: PlannerConfig):
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        try:
            space = SearchSpace(cfg.space)
        except ValueError as err:
            raise LLMError(str(err)) from err
        self.planner = Planner(space, cfg.n_startup_trials, cfg.seed)

    def decide(self, request: LLMRequest, should_stop=None) -> LLMResponse:
        """One answer, computed at once (offline: nothing to cancel, so `should_stop` is not consulted)."""
        start = time.perf_counter()
        try:
            ctx = PlannerContext.model_validate(request.context)
        except ValidationError as err:
            raise LLMError(f"the planner cannot read the context: {err.errors()[0]['msg']}") from err
        answer = self.planner.review(ctx) if request.role == "mentor" else self.planner.work(ctx)
        return LLMResponse(
            raw=json.dumps(answer), usage=Usage(), latency_s=time.perf_counter() - start, model=MODEL_NAME
        )
