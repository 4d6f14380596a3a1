"""The planner's rules: what the worker proposes (Optuna TPE), when it waits or finishes; the challenge."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna

from agentexp import noise
from agentexp.llm.planner.evidence import Evidence, PlannerContext
from agentexp.llm.planner.space import Config, SearchSpace, Value

WAIT_SECONDS = 60  # seconds to monitor a busy slot at most: the watch ends as soon as a run ends
MAX_ASKS = 24  # sampler re-asks before falling back to neighbours, then the grid
HIGH_SIGNAL = 0.7  # a priority signal at or above this changes what the planner does
STALL_TRAININGS = 3  # stall_trainings signal that counts as a stagnant stretch
STALL_RUNS = 3  # configurations in a row that did not replace the incumbent: a stagnant stretch
BREAKOUT_RUNS = 4  # such configurations before the worker itself moves the incumbent to an untried model
NOISE_SEEDS = 2  # seed runs of the first incumbent that measure the seed-noise band
ANALYZE_GAP = 3  # cycles of history that must hold no analyze before another one


@dataclass(frozen=True)
class Proposal:
    """A config to train and how the planner arrived at it (said in the rationale)."""

    config: Config
    how: str
    seed: int | None = None
    """A new trainer.seed for a repeat of a trained configuration (None: the config's first run)."""


class Planner:
    """The worker's and the mentor's rules over one search space; the context is their whole memory."""

    def __init__(self, space: SearchSpace, n_startup_trials: int, seed: int):
        self.space = space
        self.n_startup_trials = n_startup_trials
        self.seed = seed

    # ---- worker ----------------------------------------------------------------------------
    def work(self, ctx: PlannerContext) -> dict[str, Any]:
        """A WorkerDecision (as a dict) for this cycle.

        The budget goes, in this order, to: the trainer's default config (the first incumbent), one
        more seed of it (the seed-noise band), a confirmation seed for a challenger ahead of the
        incumbent within the band, a breakout onto an untried model after a long stagnant stretch,
        and otherwise a TPE proposal (random samples until n_startup_trials configurations ended, a
        pruned one included).
        """
        ev = Evidence(ctx, self.space)
        if ctx.active_runs and len(ctx.active_runs) >= ctx.max_concurrent:
            return _wait(ctx)
        if _wants_analysis(ctx, ev):
            return _analyze(ctx, ev, "non_training_priority is high")
        proposal = (
            _default(ev) or _measure_noise(ev) or _confirm(ev) or self._breakout(ev) or self._propose(ev)
        )
        if proposal is None:
            return _exhausted(ctx, ev)
        return self._train(ctx, ev, proposal)

    def _breakout(self, ev: Evidence) -> Proposal | None:
        """After BREAKOUT_RUNS configurations in a row failed to replace the incumbent: its settings on an
        untried model (the one move TPE makes poorly at a small budget)."""
        untried = ev.untried_models()
        if ev.challengers < BREAKOUT_RUNS or ev.best is None or not untried:
            return None
        config = {**ev.best.config, "model": untried[0]}
        if self.space.key(config) in ev.tried:
            return None
        how = (
            f"{ev.challengers} configurations in a row did not beat the incumbent: "
            f"its settings on the untried model {untried[0]}"
        )
        return Proposal(config, how)

    def _propose(self, ev: Evidence) -> Proposal | None:
        study, distributions = self.study(ev), self.space.distributions()
        ended = len(study.trials)
        sampled = "a random start-up sample" if ended < self.n_startup_trials else "TPE proposes"
        for _ in range(MAX_ASKS):
            trial = study.ask(distributions)
            config = self.space.snap(trial.params)
            study.tell(trial, state=optuna.trial.TrialState.FAIL)  # a re-ask must not reuse this trial
            if self.space.key(config) not in ev.tried:
                return Proposal(config, f"{sampled} after {ended} ended configurations")
        return _fallback(ev)

    def study(self, ev: Evidence) -> optuna.Study:
        """A TPE study of every ended configuration: a finished one at the mean over its seeds, a pruned one
        at the worst finished mean (it was behind the others when it stopped)."""
        # A fresh study per call: the context is the whole memory, so restarts change nothing. The seed
        # moves with the history and the cycle, or every call would draw the same start-up sample, and a
        # configuration whose training failed before it opened an MLflow run would be proposed forever.
        seed = int(np.random.SeedSequence([self.seed, len(ev.runs), ev.cycle]).generate_state(1)[0])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler = optuna.samplers.TPESampler(
                seed=seed, n_startup_trials=self.n_startup_trials, multivariate=True, n_ei_candidates=64
            )
        study = optuna.create_study(direction="maximize" if ev.maximize else "minimize", sampler=sampler)
        distributions = self.space.distributions()
        ended = [(g.config, g.metric) for g in ev.groups]
        if ended:
            worst = min(v for _, v in ended) if ev.maximize else max(v for _, v in ended)
            ended += [(r.config, worst) for r in ev.pruned]
        for config, value in ended:
            study.add_trial(
                optuna.trial.create_trial(params=config, distributions=distributions, value=value)
            )
        return study

    def _train(self, ctx: PlannerContext, ev: Evidence, proposal: Proposal) -> dict[str, Any]:
        reference = ev.reference()
        changed = self.space.most_different(proposal.config, reference)
        overrides, label = (
            self.space.to_overrides(proposal.config),
            self.space.label(proposal.config, ctx.cycle),
        )
        if proposal.seed is not None:  # a repeat measures, it changes nothing
            overrides.append(f"trainer.seed={proposal.seed}")
            label = f"{label[:72]}-s{proposal.seed}"
        return {
            "action": "train",
            "rationale": _train_rationale(ev, proposal, changed),
            "run_label": _unique_label(label, ctx),
            "overrides": overrides,
            "monitor_seconds": WAIT_SECONDS,
            "strategy_dimension": "evaluation"
            if proposal.seed is not None
            else self.space.dimensions[changed],
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
def _default(ev: Evidence) -> Proposal | None:
    """Before any run: the trainer's default config, the first incumbent (the search never ends below it)."""
    if ev.runs:
        return None
    return Proposal(
        ev.space.defaults(), "the trainer's default config first: the incumbent every proposal must beat"
    )


def _measure_noise(ev: Evidence) -> Proposal | None:
    """Until some configuration has several seeds: another seed of the incumbent (the seed-noise band)."""
    best = ev.best
    if best is None or any(g.n >= NOISE_SEEDS for g in ev.groups) or ev.space.key(best.config) in ev.pending:
        return None
    seed = ev.next_seed(best)
    how = (
        f"the incumbent again with trainer.seed={seed}: {NOISE_SEEDS} seeds measure the seed-noise band "
        "before a challenger is judged"
    )
    return Proposal(best.config, how, seed)


def _confirm(ev: Evidence) -> Proposal | None:
    """A confirmation seed for a new incumbent that won on one seed (the search builds on it: a lucky
    epoch must not steer it), else for a challenger ahead of the incumbent within the noise band."""
    group = ev.unconfirmed()
    if group is None:
        return None
    seed = ev.next_seed(group)
    if group is ev.best:
        how = (
            f"confirming the new incumbent {group.cite()} with trainer.seed={seed}: it beat the previous "
            f"one beyond the seed-noise band {ev.band:.4f} on a single seed"
        )
    else:
        gain = noise.gain(group.metric, ev.best.metric, ev.direction)
        how = (
            f"confirming {group.cite()} with trainer.seed={seed}: ahead of the incumbent by {gain:.4f}, "
            f"within the seed-noise band {ev.band:.4f}"
        )
    return Proposal(group.config, how, seed)


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
            f"watching for up to {WAIT_SECONDS}s (until a run ends) before proposing the next configuration."
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
    recent = [r for r in ev.finished[-3:] if ev.best is None or r not in ev.best.runs]
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
    best = f"the incumbent is {ev.best.cite()}" if ev.best else "no run has finished with a metric"
    if ev.challengers >= STALL_RUNS:
        latest = ", ".join(g.cite() for g in ev.groups[-STALL_RUNS:])
        return f"The last {STALL_RUNS} configurations ({latest}) did not beat the incumbent {ev.best.cite()}"
    if ctx.signals.stall_trainings >= STALL_TRAININGS:
        return f"No progress for {ctx.signals.stall_trainings} trainings (stall signal); {best}"
    return None


def _progress_evidence(ev: Evidence) -> str:
    if ev.best is None:
        return "No finished run yet; nothing to challenge until the first result arrives."
    if ev.challengers == 0 and len(ev.groups) > 1:
        return f"The metric improves: the latest incumbent is {ev.best.cite()}."
    return (
        f"No stagnant stretch yet: the incumbent is {ev.best.cite()} after {len(ev.finished)} finished runs."
    )


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
