"""Offline planner backend: Optuna TPE proposals over a search space and a rule-based mentor."""

from __future__ import annotations

import itertools
import json
import logging
import math
import re
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agentexp.llm.base import LLMError, LLMRequest, LLMResponse, PlannerConfig, Usage

log = logging.getLogger(__name__)

Value = str | bool | int | float | None
Config = dict[str, Value]

MODEL_NAME = "planner"
WAIT_SECONDS = 60  # seconds to monitor a busy slot before looking again
MAX_ASKS = 24  # sampler re-asks before falling back to neighbours, then the grid
HIGH_SIGNAL = 0.7  # a priority signal at or above this changes what the planner does
STALL_CYCLES = 3  # stall_cycles signal that counts as a stagnant stretch
STALL_RUNS = 3  # finished runs in a row without a new best that count as a stagnant stretch
ANALYZE_GAP = 3  # cycles of history that must hold no analyze before another one
GRID_POINTS = 5  # values per float range in the exhaustive fallback grid
NEIGHBOUR_STEPS = (1.5, 1 / 1.5, 2.0, 0.5, 3.0, 1 / 3)  # multiplicative float steps around a config

_EXACT_DIMENSIONS = {
    "data.image_size": "preprocessing",
    "data.balanced_sampler": "data_sampling",
    "data.batch_size": "optimization",
    "metric.tta": "evaluation",
}
_PREFIX_DIMENSIONS = {
    "model": "model_arch",
    "optim": "optimization",
    "trainer": "optimization",
    "aug": "augmentation",
    "loss": "loss",
    "data": "preprocessing",
    "metric": "evaluation",
}


def dimension_of(key: str) -> str:
    """The strategy dimension a search-space key belongs to (`optim.lr` -> optimization)."""
    if key in _EXACT_DIMENSIONS:
        return _EXACT_DIMENSIONS[key]
    prefix = key.split(".", 1)[0]
    if prefix not in _PREFIX_DIMENSIONS:
        raise ValueError(f"planner search-space key {key!r} belongs to no strategy dimension")
    return _PREFIX_DIMENSIONS[prefix]


def _round2(x: float) -> float:
    """Round to 2 significant digits, so proposals stay comparable and overrides short."""
    return float(f"{x:.2g}")


def _fmt_value(value: Value) -> str:
    """A value as Hydra override text (`true`, `null`, `0.0003`)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return repr(value) if isinstance(value, float) else str(value)


def _short_num(x: float) -> str:
    """A float for a run label: 0.0003 -> 3e-4, 0.012 -> 1.2e-2."""
    mantissa, exponent = f"{x:.1e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def _short_key(key: str) -> str:
    """An abbreviation of a dotted key for run labels: optim.weight_decay -> wd."""
    words = key.rsplit(".", 1)[-1].split("_")
    return words[0][:3] if len(words) == 1 else "".join(w[0] for w in words if w)


def _fmt_metric(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4g}"


def _short_id(run_id: str) -> str:
    return run_id[:8]


class ParamSpec(BaseModel):
    """One searched parameter: a list of choices, or a float range."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    choices: list[Value] | None = None
    """Categorical values (a Hydra group's options or a key's allowed values)."""
    low: float | None = None
    """Lower bound of a float range."""
    high: float | None = None
    """Upper bound of a float range."""
    log: bool = False
    """Sample the float range on a log scale."""
    default: Value
    """The value a run has when its overrides do not name this key (the trainer's default)."""

    @model_validator(mode="after")
    def _one_kind(self) -> ParamSpec:
        if (self.choices is None) == (self.low is None or self.high is None):
            raise ValueError("give either `choices` or both `low` and `high`")
        if self.choices is not None and self.default not in self.choices:
            raise ValueError(f"default {self.default!r} is not among the choices")
        if self.choices is None and not (self.low < self.high and (self.low > 0 or not self.log)):
            raise ValueError("need low < high, and low > 0 on a log scale")
        numeric = isinstance(self.default, int | float) and not isinstance(self.default, bool)
        if self.choices is None and not (numeric and self.low <= self.default <= self.high):
            raise ValueError(f"default {self.default!r} is outside [{self.low}, {self.high}]")
        return self

    @property
    def is_float(self) -> bool:
        return self.choices is None

    def distribution(self) -> BaseDistribution:
        if self.is_float:
            return FloatDistribution(self.low, self.high, log=self.log)
        return CategoricalDistribution(self.choices)

    def snap(self, value: Value) -> Value:
        """A float rounded to 2 significant digits and kept in range; choices unchanged."""
        if not self.is_float:
            return value
        return min(max(_round2(float(value)), self.low), self.high)

    def parse(self, text: str) -> Value:
        """The value an override's text names, or raise ValueError when it is outside the range."""
        if not self.is_float:
            for choice in self.choices:
                if _fmt_value(choice) == text or str(choice) == text:
                    return choice
            raise ValueError(f"{text!r} is not a choice")
        x = float(text)
        if not (math.isfinite(x) and self.low * (1 - 1e-9) <= x <= self.high * (1 + 1e-9)):
            raise ValueError(f"{text!r} is outside [{self.low}, {self.high}]")
        return self.snap(x)

    def position(self, value: Value) -> float:
        """Where a float lies in its range, 0..1 (log scale when the range is log)."""
        t = math.log10 if self.log else float
        return (t(float(value)) - t(self.low)) / (t(self.high) - t(self.low))

    def at(self, position: float) -> float:
        """The float at a position 0..1 of the range (the inverse of `position`)."""
        if self.log:
            return self.low * (self.high / self.low) ** position
        return self.low + (self.high - self.low) * position

    def distance(self, a: Value, b: Value) -> float:
        """How far two values are apart, 0..1."""
        if not self.is_float:
            return float(a != b)
        return abs(self.position(a) - self.position(b))

    def grid(self) -> list[Value]:
        if not self.is_float:
            return list(self.choices)
        positions = np.linspace(0.0, 1.0, GRID_POINTS)
        return list(dict.fromkeys(self.snap(self.at(float(p))) for p in positions))

    def neighbours(self, value: Value) -> Iterator[Value]:
        if not self.is_float:
            yield from (c for c in self.choices if c != value)
            return
        for step in NEIGHBOUR_STEPS:
            near = self.snap(float(value) * step)
            if near != value:
                yield near


class SearchSpace:
    """The planner's parameters: Optuna distributions, rounding, Hydra overrides in and out."""

    def __init__(self, raw: dict[str, Any]):
        if not raw:
            raise ValueError("the planner's search space is empty: set llm.space in conf/llm/planner.yaml")
        try:
            self.params = {key: ParamSpec.model_validate(spec) for key, spec in raw.items()}
        except ValidationError as err:
            raise ValueError(f"the planner's search space is invalid: {err}") from err
        self.dimensions = {key: dimension_of(key) for key in self.params}
        # group choices (`optim=sgd`) go before the values inside the group (`optim.lr=...`)
        self.override_order = sorted(self.params, key=lambda k: "." in k)

    def distributions(self) -> dict[str, BaseDistribution]:
        return {key: spec.distribution() for key, spec in self.params.items()}

    def defaults(self) -> Config:
        return {key: spec.snap(spec.default) for key, spec in self.params.items()}

    def snap(self, config: dict[str, Any]) -> Config:
        return {key: spec.snap(config[key]) for key, spec in self.params.items()}

    def key(self, config: Config) -> tuple:
        return tuple(config[key] for key in self.params)

    def parse_overrides(self, overrides: list[str]) -> Config | None:
        """The config a run's overrides describe, or None when a searched key has a value outside the space.

        Overrides on keys the planner does not search (`trainer.epochs=3`, `run_label=...`) are
        settings shared by the mission, not searched parameters, and are ignored.
        """
        config = self.defaults()
        for item in overrides:
            key, sep, text = item.partition("=")
            if not sep or key not in self.params:
                continue
            try:
                config[key] = self.params[key].parse(text.strip().strip("'\""))
            except ValueError:
                return None
        return config

    def to_overrides(self, config: Config) -> list[str]:
        return [f"{key}={_fmt_value(config[key])}" for key in self.override_order]

    def describe(self, config: Config) -> str:
        return ", ".join(f"{key}={_fmt_value(config[key])}" for key in self.params)

    def grid(self) -> Iterator[Config]:
        keys = list(self.params)
        for values in itertools.product(*(self.params[k].grid() for k in keys)):
            yield dict(zip(keys, values, strict=True))

    def neighbours(self, config: Config) -> Iterator[Config]:
        """Configs that change one parameter of `config` by one step."""
        for key, spec in self.params.items():
            for value in spec.neighbours(config[key]):
                yield {**config, key: value}

    def most_different(self, config: Config, reference: Config) -> str:
        """The key whose value differs most from the reference (first in space order on ties)."""
        return max(self.params, key=lambda k: self.params[k].distance(config[k], reference[k]))

    def label(self, config: Config, cycle: int) -> str:
        parts = [f"p{cycle:02d}"]
        for key, spec in self.params.items():
            value = config[key]
            if spec.is_float:
                parts.append(f"{_short_key(key)}{_short_num(float(value))}")
            else:
                parts.append(_fmt_value(value) if "." not in key else f"{_short_key(key)}{_fmt_value(value)}")
        return re.sub(r"[^A-Za-z0-9._-]", "_", "-".join(parts))[:80]


# Views of the structured context. They read only what the planner needs and ignore the rest
# (prompt-only fields), so extra keys are allowed here, unlike the decision contracts.
class _View(BaseModel):
    model_config = ConfigDict(extra="ignore", use_attribute_docstrings=True)


class RunView(_View):
    """A training run as the context lists it."""

    run_id: str
    """MLflow run id."""
    run_label: str | None = None
    """The run's label (MLflow run name)."""
    status: str = "FINISHED"
    """FINISHED, FAILED, KILLED or RUNNING."""
    overrides: list[str] = []
    """Hydra overrides the training ran with."""
    metric: float | None = None
    """The summary metric, when the run logged one."""


class MetricView(_View):
    """The metric the mission optimizes."""

    key: str = "val_acc"
    """Per-epoch metric key."""
    summary: str = "best_val_acc"
    """Summary metric the leaderboard orders by."""
    direction: Literal["maximize", "minimize"] = "maximize"
    """Which way is better."""


class SignalsView(_View):
    """Priority signals computed from the history."""

    research_priority: float = 0.0
    """How much the history asks for new directions."""
    non_training_priority: float = 0.0
    """How much the history asks for a non-training (analysis) cycle."""
    breakout_priority: float = 0.0
    """How much the history asks to break out of the current model family."""
    stall_cycles: int = 0
    """Cycles since the best metric last improved."""


class HistoryView(_View):
    """One recent cycle."""

    cycle: int = 0
    """Cycle number."""
    action: str | None = None
    """The action the cycle took."""


class PlannerContext(_View):
    """The parts of `LLMRequest.context` the planner reads."""

    cycle: int = 1
    """The cycle being decided."""
    metric: MetricView = MetricView()
    """The mission's metric and direction."""
    runs: list[RunView] = []
    """Every training run, newest last."""
    active_runs: list[str] = []
    """Labels of runs still training."""
    signals: SignalsView = SignalsView()
    """Priority signals."""
    history: list[HistoryView] = []
    """Recent cycles, newest last."""
    decision: dict[str, Any] | None = None
    """Mentor role: the worker decision under review."""
    max_concurrent: int = Field(1, ge=1)
    """Training slots the loop allows; the planner waits while they are all busy."""


@dataclass(frozen=True)
class KnownRun:
    """A run whose overrides lie inside the search space."""

    run_id: str
    label: str
    status: str
    config: Config
    metric: float | None

    def cite(self) -> str:
        return f"run {_short_id(self.run_id)} ({self.label}) {_fmt_metric(self.metric)}"


class Evidence:
    """What the runs in the context say: their configs, the best finished run, what was tried."""

    def __init__(self, ctx: PlannerContext, space: SearchSpace):
        self.space = space
        self.maximize = ctx.metric.direction == "maximize"
        self.metric_name = ctx.metric.summary
        self.runs = [run for view in ctx.runs if (run := _known(view, space)) is not None]
        self.skipped = len(ctx.runs) - len(self.runs)
        self.finished = [r for r in self.runs if r.status == "FINISHED" and r.metric is not None]
        self.tried = {space.key(r.config) for r in self.runs}
        self.best = self.best_of(self.finished)

    def better(self, a: float, b: float) -> bool:
        return a > b if self.maximize else a < b

    def best_of(self, runs: list[KnownRun]) -> KnownRun | None:
        best = None
        for run in runs:
            if best is None or self.better(run.metric, best.metric):
                best = run
        return best

    def untried_models(self) -> list[Value]:
        spec = self.space.params.get("model")
        used = {r.config["model"] for r in self.runs}
        return [] if spec is None else [m for m in spec.choices if m not in used]

    def uncompared_models(self) -> list[Value]:
        """Models without a head-to-head run: one whose other settings equal another model's run."""
        spec = self.space.params.get("model")
        if spec is None:
            return []
        models_by_settings: dict[tuple, set[Value]] = {}
        for run in self.runs:
            settings = tuple(v for k, v in run.config.items() if k != "model")
            models_by_settings.setdefault(settings, set()).add(run.config["model"])
        compared = set().union(*(m for m in models_by_settings.values() if len(m) > 1))
        return [m for m in spec.choices if m not in compared]

    def reference(self) -> Config:
        return self.best.config if self.best else self.space.defaults()


def _known(view: RunView, space: SearchSpace) -> KnownRun | None:
    config = space.parse_overrides(view.overrides)
    if config is None:
        log.debug("planner skips run %s: its overrides fall outside the search space", view.run_id)
        return None
    metric = view.metric if view.metric is not None and math.isfinite(view.metric) else None
    return KnownRun(view.run_id, view.run_label or view.run_id, view.status.upper(), config, metric)


@dataclass(frozen=True)
class Proposal:
    """A config to train and how the planner arrived at it (said in the rationale)."""

    config: Config
    how: str


class PlannerBackend:
    """Offline backend: answers worker requests with Optuna proposals and mentor requests with rules."""

    def __init__(self, cfg: PlannerConfig):
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.cfg = cfg
        try:
            self.space = SearchSpace(cfg.space)
        except ValueError as err:
            raise LLMError(str(err)) from err

    def decide(self, request: LLMRequest) -> LLMResponse:
        start = time.perf_counter()
        try:
            ctx = PlannerContext.model_validate(request.context)
        except ValidationError as err:
            raise LLMError(f"the planner cannot read the context: {err.errors()[0]['msg']}") from err
        answer = self.review(ctx) if request.role == "mentor" else self.work(ctx)
        return LLMResponse(
            raw=json.dumps(answer), usage=Usage(), latency_s=time.perf_counter() - start, model=MODEL_NAME
        )

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
        model = untried[0] if untried else _least_tried_model(ev)
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
        if len(ev.finished) < self.cfg.n_startup_trials or ev.best is None:
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
        startup = len(ev.finished) < self.cfg.n_startup_trials
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
        seed = int(np.random.SeedSequence([self.cfg.seed, len(ev.finished)]).generate_state(1)[0])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler = optuna.samplers.TPESampler(
                seed=seed, n_startup_trials=self.cfg.n_startup_trials, multivariate=True, n_ei_candidates=64
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
        alternative = untried[0] if untried else _least_tried_model(ev)
        review: dict[str, Any] = {
            "verdict": "off_track",
            "rationale": f"{stall}. The search is stuck around the same settings; change the architecture.",
            "critical_question": _question(stall, alternative, alternative in untried)[:500],
        }
        if alternative is None:
            return review
        review["architecture_alternatives"] = [str(alternative)]
        todo = f"Train {alternative} with the best run's remaining settings ({_best_settings(ev)})."
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
    notes = _summary(ev)
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


def _summary(ev: Evidence) -> str:
    """Per-dimension notes: the best metric reached by each value (or range) of each parameter."""
    direction = "higher" if ev.maximize else "lower"
    head = f"Planner summary of {len(ev.finished)} finished runs ({ev.metric_name}, {direction} is better)."
    lines = [head]
    if ev.best:
        lines.append(f"Best: {ev.best.cite()}: {ev.space.describe(ev.best.config)}.")
    for key, spec in ev.space.params.items():
        groups: dict[str, list[float]] = {}
        for run in ev.finished:
            groups.setdefault(_bucket(spec, run.config[key]), []).append(run.metric)
        cells = [
            f"{name} best {_fmt_metric(max(v) if ev.maximize else min(v))} ({_runs(len(v))})"
            for name, v in sorted(groups.items())
        ]
        lines.append(f"- {ev.space.dimensions[key]} / {key}: " + "; ".join(cells))
    untried = ev.untried_models()
    if untried:
        lines.append("Untried models: " + ", ".join(map(str, untried)) + ".")
    return "\n".join(lines)[:2000]


def _runs(n: int) -> str:
    return f"{n} run" if n == 1 else f"{n} runs"


def _bucket(spec: ParamSpec, value: Value) -> str:
    """A value's name in the summary: the value itself, or the third of the float range it lies in."""
    if not spec.is_float:
        return _fmt_value(value)
    third = min(int(spec.position(value) * 3), 2)
    low, high = (spec.at(i / 3) for i in (third, third + 1))
    return f"{_short_num(low)}..{_short_num(high)}"


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


def _least_tried_model(ev: Evidence) -> Value | None:
    spec = ev.space.params.get("model")
    if spec is None:
        return None
    best_model = ev.best.config["model"] if ev.best else None
    counts = {m: sum(r.config["model"] == m for r in ev.runs) for m in spec.choices if m != best_model}
    return min(counts, key=counts.get) if counts else None


def _best_settings(ev: Evidence) -> str:
    config = ev.reference()
    return ", ".join(f"{k}={_fmt_value(v)}" for k, v in config.items() if k != "model")


def _question(stall: str, alternative: Value | None, untried: bool) -> str:
    if alternative is None:
        return f"{stall}: which dimension other than the architecture has not been explored yet?"
    fact = "which no run has used" if untried else "the least tried architecture"
    return f"{stall}: why keep tuning the same settings instead of trying {alternative}, {fact}?"
