"""What the planner reads: views of the structured context and the evidence its runs give."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from agentexp.llm.planner.space import Config, ParamSpec, SearchSpace, Value, fmt_value, short_num

log = logging.getLogger(__name__)


def _fmt_metric(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4g}"


def _short_id(run_id: str) -> str:
    return run_id[:8]


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

    def least_tried_model(self) -> Value | None:
        """The model (other than the best run's) that the fewest runs used."""
        spec = self.space.params.get("model")
        if spec is None:
            return None
        best_model = self.best.config["model"] if self.best else None
        counts = {m: sum(r.config["model"] == m for r in self.runs) for m in spec.choices if m != best_model}
        return min(counts, key=counts.get) if counts else None

    def best_settings(self) -> str:
        """The reference config's settings other than the model, as override text."""
        config = self.reference()
        return ", ".join(f"{k}={fmt_value(v)}" for k, v in config.items() if k != "model")

    def summary(self) -> str:
        """Per-dimension notes: the best metric reached by each value (or range) of each parameter."""
        direction = "higher" if self.maximize else "lower"
        n = len(self.finished)
        lines = [f"Planner summary of {n} finished runs ({self.metric_name}, {direction} is better)."]
        if self.best:
            lines.append(f"Best: {self.best.cite()}: {self.space.describe(self.best.config)}.")
        for key, spec in self.space.params.items():
            groups: dict[str, list[float]] = {}
            for run in self.finished:
                groups.setdefault(_bucket(spec, run.config[key]), []).append(run.metric)
            cells = [
                f"{name} best {_fmt_metric(max(v) if self.maximize else min(v))} ({_runs(len(v))})"
                for name, v in sorted(groups.items())
            ]
            lines.append(f"- {self.space.dimensions[key]} / {key}: " + "; ".join(cells))
        untried = self.untried_models()
        if untried:
            lines.append("Untried models: " + ", ".join(map(str, untried)) + ".")
        return "\n".join(lines)[:2000]


def _known(view: RunView, space: SearchSpace) -> KnownRun | None:
    config = space.parse_overrides(view.overrides)
    if config is None:
        log.debug("planner skips run %s: its overrides fall outside the search space", view.run_id)
        return None
    metric = view.metric if view.metric is not None and math.isfinite(view.metric) else None
    return KnownRun(view.run_id, view.run_label or view.run_id, view.status.upper(), config, metric)


def _runs(n: int) -> str:
    return f"{n} run" if n == 1 else f"{n} runs"


def _bucket(spec: ParamSpec, value: Value) -> str:
    """A value's name in the summary: the value itself, or the third of the float range it lies in."""
    if not spec.is_float:
        return fmt_value(value)
    third = min(int(spec.position(value) * 3), 2)
    low, high = (spec.at(i / 3) for i in (third, third + 1))
    return f"{short_num(low)}..{short_num(high)}"
