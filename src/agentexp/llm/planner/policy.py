"""The planner's rules: what the worker proposes (Optuna TPE), when it waits or finishes; the challenge."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna

from agentexp.llm.planner.evidence import Evidence, PlannerContext
from agentexp.llm.planner.space import Config, SearchSpace, Value

WAIT_SECONDS = 60  # seconds to monitor a busy slot before looking again
MAX_ASKS = 24  # sampler re-asks before falling back to neighbours, then the grid
HIGH_SIGNAL = 0.7  # a priority signal at or above this changes what the planner does
STALL_CYCLES = 3  # stall_cycles signal that counts as a stagnant stretch
STALL_RUNS = 3  # finished runs in a row without a new best that count as a stagnant stretch
ANALYZE_GAP = 3  # cycles of history that must hold no analyze before another one


@dataclass(frozen=True)
class Proposal:
    """A config to train and how the planner arrived at it (said in the rationale)."""

    config: Config
    how: str


class Planner:
    """The worker's and the mentor's rules over one search space; the context is their whole memory."""

    def __init__(self, space: SearchSpace, n_startup_trials: int, seed: int):
        self.space = space
        self.n_startup_trials = n_startup_trials
        self.seed = seed

    # ---- worker ----------------------------------------------------------------------------
    def work(self, ctx: PlannerContext) -> dict[str, Any]:
        """A WorkerDecision (as a dict) for this cycle."""
        ev = Evidence(ctx, self.space)
        if ctx.active_runs and len(ctx.active_runs) >= ctx.max_concurrent:
            return _wait(ctx)
        if _wants_analysis(ctx, ev):
            return _analyze(ctx, ev, "non_training_priority is high")
        proposal = self._breakout(ctx, ev) or self._coverage(ev) or self._propose(ev)
        if proposal is None:
            return _exhausted(ctx, ev)
        return self._train(ctx, ev, proposal)

    def _breakout(self, ctx: PlannerContext, ev: Evidence) -> Proposal | None:
        """High breakout_priority: the best run's settings on an untried (else the least tried) model."""
        if ctx.signals.breakout_priority < HIGH_SIGNAL or ev.best is None:
            return None
        untried = ev.untried_models()
        model = untried[0] if untried else ev.least_tried_model()
        if model is None or self.space.key(config := {**ev.best.config, "model": model}) in ev.tried:
            return None
        kind = "untried" if untried else "least tried"
        how = (
            f"breakout_priority {ctx.signals.breakout_priority:.2f} is high: the best run's settings "
            f"on the {kind} model {model}"
        )
        return Proposal(config, how)

    def _coverage(self, ev: Evidence) -> Proposal | None:
        """After the start-up trials, each model gets a head-to-head run on the best run's settings.

        TPE explores a 5-way architecture choice poorly at a budget of ~20 runs: a good model that
        drew bad random settings once is rarely sampled again. Comparing models on equal settings
        first removes that failure (it was the planner's worst loss against random search).
        """
        if len(ev.finished) < self.n_startup_trials or ev.best is None:
            return None
        for model in ev.uncompared_models():
            config = {**ev.best.config, "model": model}
            if self.space.key(config) not in ev.tried:
                how = f"{model} head-to-head on the best run's settings (every model gets one before TPE)"
                return Proposal(config, how)
        return None

    def _propose(self, ev: Evidence) -> Proposal | None:
        study = self._study(ev)
        distributions = self.space.distributions()
        startup = len(ev.finished) < self.n_startup_trials
        sampler_name = "random start-up sample" if startup else "TPE proposes"
        for _ in range(MAX_ASKS):
            trial = study.ask(distributions)
            config = self.space.snap(trial.params)
            study.tell(trial, state=optuna.trial.TrialState.FAIL)  # a re-ask must not reuse this trial
            if self.space.key(config) not in ev.tried:
                return Proposal(config, f"{sampler_name} after {len(ev.finished)} finished runs")
        return _fallback(ev)

    def _study(self, ev: Evidence) -> optuna.Study:
        # A fresh study per call: the context is the whole memory, so restarts change nothing.
        # The seed moves with the history, or every call would draw the same start-up sample.
        seed = int(np.random.SeedSequence([self.seed, len(ev.finished)]).generate_state(1)[0])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler = optuna.samplers.TPESampler(
                seed=seed, n_startup_trials=self.n_startup_trials, multivariate=True, n_ei_candidates=64
            )
        study = optuna.create_study(direction="maximize" if ev.maximize else "minimize", sampler=sampler)
        distributions = self.space.distributions()
        for run in ev.finished:
            study.add_trial(
                optuna.trial.create_trial(params=run.config, distributions=distributions, value=run.metric)
            )
        return study

    def _train(self, ctx: PlannerContext, ev: Evidence, proposal: Proposal) -> dict[str, Any]:
        reference = ev.reference()
        changed = self.space.most_different(proposal.config, reference)
        return {
            "action": "train",
            "rationale": _train_rationale(ev, proposal, changed),
            "run_label": _unique_label(self.space.label(proposal.config, ctx.cycle), ctx),
            "overrides": self.space.to_overrides(proposal.config),
            "monitor_seconds": WAIT_SECONDS,
            "strategy_dimension": self.space.dimensions[changed],
        }

    # ---- mentor ----------------------------------------------------------------------------
    def review(self, ctx: PlannerContext) -> dict[str, Any]:
        """A MentorReview (as a dict) of the worker's decision in `ctx.decision`."""
        ev = Evidence(ctx, self.space)
        stall = _stall_evidence(ctx, ev)
        if stall is None:
            return {"verdict": "on_track", "rationale": _progress_evidence(ev)}
        untried = ev.untried_models()
        proposed_model = _decision_model(ctx.decision)
        if proposed_model is not None and proposed_model in map(str, untried):
            why = f"{stall}; the decision under review already tries the untried model {proposed_model}."
            return {"verdict": "on_track", "rationale": why}
        return self._challenge(ctx, ev, stall, untried)

    def _challenge(
        self, ctx: PlannerContext, ev: Evidence, stall: str, untried: list[Value]
    ) -> dict[str, Any]:
        alternative = untried[0] if untried else ev.least_tried_model()
        review: dict[str, Any] = {
            "verdict": "off_track",
            "rationale": f"{stall}. The search is stuck around the same settings; change the architecture.",
            "critical_question": _question(stall, alternative, alternative in untried)[:500],
        }
        if alternative is None:
            return review
        review["architecture_alternatives"] = [str(alternative)]
        todo = f"Train {alternative} with the best run's remaining settings ({ev.best_settings()})."
        review["todo"] = todo[:300]
        config = {**ev.reference(), "model": alternative}
        busy = len(ctx.active_runs) >= ctx.max_concurrent
        if not busy and self.space.key(config) not in ev.tried:
            proposal = Proposal(config, f"mentor: stagnant stretch, trying the architecture {alternative}")
            review["replacement"] = self._train(ctx, ev, proposal)
        return review


# ---- worker helpers ------------------------------------------------------------------------
def _fallback(ev: Evidence) -> Proposal | None:
    """An untried neighbour of the best config, else the first untried grid point, else None."""
    config = _first_untried(ev.space.neighbours(ev.reference()), ev)
    if config is not None:
        return Proposal(config, "the sampler only repeated tried configs; a neighbour of the best run")
    config = _first_untried(ev.space.grid(), ev)
    if config is not None:
        return Proposal(config, "the sampler only repeated tried configs; the first untried grid point")
    return None


def _first_untried(configs: Iterator[Config], ev: Evidence) -> Config | None:
    return next((c for c in configs if ev.space.key(c) not in ev.tried), None)


def _wait(ctx: PlannerContext) -> dict[str, Any]:
    active = ", ".join(ctx.active_runs)
    return {
        "action": "wait",
        "rationale": (
            f"{len(ctx.active_runs)} of {ctx.max_concurrent} training slot(s) busy ({active}); "
            f"monitoring for {WAIT_SECONDS}s before proposing the next configuration."
        ),
        "monitor_seconds": WAIT_SECONDS,
    }


def _wants_analysis(ctx: PlannerContext, ev: Evidence) -> bool:
    recent = [h.action for h in ctx.history[-ANALYZE_GAP:]]
    high = ctx.signals.non_training_priority >= HIGH_SIGNAL
    return high and len(ev.finished) >= 2 and "analyze" not in recent


def _analyze(ctx: PlannerContext, ev: Evidence, why: str) -> dict[str, Any]:
    notes = ev.summary()
    rationale = f"{why}: summarizing {len(ev.finished)} finished runs per dimension before training more. "
    if ev.best:
        rationale += f"Best so far {ev.best.cite()}."
    return {
        "action": "analyze",
        "rationale": rationale[:2000],
        "housekeeping": {"notes_update": notes},
    }


def _exhausted(ctx: PlannerContext, ev: Evidence) -> dict[str, Any]:
    last = ctx.history[-1].action if ctx.history else ""
    if ev.finished and last != "analyze":
        return _analyze(ctx, ev, "every configuration of the search space was tried")
    best = f" Best {ev.best.cite()}." if ev.best else ""
    return {"action": "finish", "rationale": f"Every configuration of the search space was tried.{best}"}


def _train_rationale(ev: Evidence, proposal: Proposal, changed: str) -> str:
    space = ev.space
    if ev.best is None:
        head = "No finished run yet"
    else:
        head = f"Best so far {ev.best.cite()} ({space.describe(ev.best.config)})"
    recent = [r for r in ev.finished[-3:] if r is not ev.best]
    if recent:
        head += "; latest: " + ", ".join(r.cite() for r in recent)
    reference = "the best run" if ev.best else "the defaults"
    body = (
        f". Next: {proposal.how}: {space.describe(proposal.config)}; "
        f"it differs most from {reference} in {changed} ({space.dimensions[changed]})."
    )
    if ev.skipped:
        body += f" {ev.skipped} run(s) outside the search space were left out."
    return (head + body)[:2000]


def _unique_label(label: str, ctx: PlannerContext) -> str:
    taken = {r.run_label for r in ctx.runs} | set(ctx.active_runs)
    candidate, n = label, 2
    while candidate in taken:
        suffix = f"-{n}"
        candidate, n = label[: 80 - len(suffix)] + suffix, n + 1
    return candidate


# ---- mentor helpers ------------------------------------------------------------------------
def _stall_evidence(ctx: PlannerContext, ev: Evidence) -> str | None:
    """A sentence describing a stagnant stretch, or None while the metric still improves."""
    fin = ev.finished
    best = f"the best is {ev.best.cite()}" if ev.best else "no run has finished with a metric"
    if len(fin) > STALL_RUNS:
        before = ev.best_of(fin[:-STALL_RUNS])
        last = fin[-STALL_RUNS:]
        if not any(ev.better(r.metric, before.metric) for r in last):
            latest = ", ".join(r.cite() for r in last)
            return f"The last {STALL_RUNS} finished runs ({latest}) did not beat {before.cite()}"
    if ctx.signals.stall_cycles >= STALL_CYCLES:
        return f"No progress for {ctx.signals.stall_cycles} cycles (stall signal); {best}"
    return None


def _progress_evidence(ev: Evidence) -> str:
    if ev.best is None:
        return "No finished run yet; nothing to challenge until the first result arrives."
    latest = ev.finished[-1]
    if latest is ev.best and len(ev.finished) > 1:
        previous = ev.best_of(ev.finished[:-1])
        return f"The metric improves: the latest {latest.cite()} beat the previous best {previous.cite()}."
    return f"No stagnant stretch yet: best {ev.best.cite()} after {len(ev.finished)} finished runs."


def _decision_model(decision: dict[str, Any] | None) -> str | None:
    """The model a train decision under review names, if any."""
    if not decision or decision.get("action") != "train":
        return None
    for item in decision.get("overrides") or []:
        key, _, value = str(item).partition("=")
        if key == "model":
            return value
    return None


def _question(stall: str, alternative: Value | None, untried: bool) -> str:
    if alternative is None:
        return f"{stall}: which dimension other than the architecture has not been explored yet?"
    fact = "which no run has used" if untried else "the least tried architecture"
    return f"{stall}: why keep tuning the same settings instead of trying {alternative}, {fact}?"
