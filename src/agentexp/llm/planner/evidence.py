"""What the planner reads: views of the structured context and the evidence its runs give."""

from __future__ import annotations

import logging
import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from agentexp import noise
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
    pruned: bool = False
    """Stopped early by the pruner (no summary metric: it was behind the others)."""


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
    stall_trainings: int = 0
    """Trainings since the best metric last improved."""


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
    seed: int | None = None
    """The run's trainer.seed override (None: the trainer's default seed)."""
    pruned: bool = False

    def cite(self) -> str:
        return f"run {_short_id(self.run_id)} ({self.label}) {_fmt_metric(self.metric)}"


@dataclass
class Group:
    """One configuration's finished seed runs (oldest first): what the noise rule compares."""

    runs: list[KnownRun] = field(default_factory=list)

    @property
    def config(self) -> Config:
        return self.runs[0].config

    @property
    def run_id(self) -> str:
        return self.runs[0].run_id

    @property
    def label(self) -> str:
        return self.runs[0].label

    @property
    def metric(self) -> float:
        """The mean over its seed runs."""
        return statistics.fmean(r.metric for r in self.runs)

    @property
    def n(self) -> int:
        return len(self.runs)

    @property
    def std(self) -> float | None:
        return statistics.stdev(r.metric for r in self.runs) if self.n > 1 else None

    def cite(self) -> str:
        value = (
            _fmt_metric(self.metric)
            if self.n == 1
            else f"{self.metric:.4g} ± {self.std:.2g} ({self.n} seeds)"
        )
        return f"run {_short_id(self.run_id)} ({self.label}) {value}"


class Evidence:
    """What the runs in the context say: their configs grouped over seeds, the seed-noise band, the
    incumbent (the configuration to beat), what was tried."""

    def __init__(self, ctx: PlannerContext, space: SearchSpace):
        self.space = space
        self.cycle = ctx.cycle
        self.maximize = ctx.metric.direction == "maximize"
        self.direction = ctx.metric.direction
        self.metric_name = ctx.metric.summary
        self.runs = [run for view in ctx.runs if (run := _known(view, space)) is not None]
        self.skipped = len(ctx.runs) - len(self.runs)
        self.finished = [r for r in self.runs if r.status == "FINISHED" and r.metric is not None]
        self.tried = {space.key(r.config) for r in self.runs}
        self.pending = {space.key(r.config) for r in self.runs if r.status == "RUNNING"}
        groups: dict[tuple, Group] = {}
        for run in self.finished:
            groups.setdefault(space.key(run.config), Group()).runs.append(run)
        self.groups = list(groups.values())
        """Finished configurations in the order their first run appears."""
        self.pruned = [r for r in self.runs if r.pruned and space.key(r.config) not in groups]
        """Configurations the pruner stopped early (none of their runs finished)."""
        self.refuted = {space.key(r.config) for r in self.runs if r.pruned}
        """Configurations with a pruned run: a pruned confirmation seed fell behind, so no other is tried."""
        self.band = noise.band(self.groups)
        self.best, self.challengers = self._incumbent()

    def _incumbent(self) -> tuple[Group | None, int]:
        """The configuration to beat, and how many configurations since it became it did not replace it.

        The first finished configuration starts as the incumbent; a later one replaces it when its mean
        beats the incumbent's beyond the seed-noise band, or, once confirmed by a second seed, when its
        mean is ahead at all (the confirmation settled what the band left open). A pruned configuration,
        or one whose confirmation seed was pruned, is a challenger that did not replace it; a new
        incumbent's own confirmation seed can hand the place back (its mean no longer beats)."""
        best, challengers = None, 0
        ended = {self.space.key(g.config): g for g in self.groups} | {
            self.space.key(r.config): None for r in self.pruned
        }
        for key in dict.fromkeys(k for r in self.runs if (k := self.space.key(r.config)) in ended):
            group = ended[key]  # each ended configuration in the order its first run appears
            if group is None:  # pruned
                challengers += best is not None
                continue
            if best is None:
                best = group
                continue
            if key in self.refuted:  # its confirmation seed was pruned: it fell behind
                challengers += 1
                continue
            gain = noise.gain(group.metric, best.metric, self.direction)
            if noise.beats(group.metric, best.metric, self.band, self.direction) or (
                group.n > 1 and gain > 0
            ):
                best, challengers = group, 0
            else:
                challengers += 1
        return best, challengers

    def unconfirmed(self) -> Group | None:
        """The incumbent when it replaced another on one seed, else the best configuration ahead of the
        incumbent within the noise band on one seed; either with its confirmation neither running nor
        pruned."""
        if self.best is None:
            return None
        waiting = self.pending | self.refuted
        if (
            self.best.n == 1
            and self.best is not self.groups[0]
            and self.space.key(self.best.config) not in waiting
        ):
            return self.best
        ahead = [
            g
            for g in self.groups
            if g is not self.best
            and g.n == 1
            and noise.gain(g.metric, self.best.metric, self.direction) > 0
            and self.space.key(g.config) not in waiting
        ]
        return self.best_of(ahead)

    def next_seed(self, group: Group) -> int:
        """A training seed none of the configuration's runs used."""
        seeds = [r.seed for r in self.runs if self.space.key(r.config) == self.space.key(group.config)]
        return 1 + max((s for s in seeds if s is not None), default=0)

    def better(self, a: float, b: float) -> bool:
        return a > b if self.maximize else a < b

    def best_of(self, runs: list):
        best = None
        for run in runs:
            if best is None or self.better(run.metric, best.metric):
                best = run
        return best

    def untried_models(self) -> list[Value]:
        spec = self.space.params.get("model")
        used = {r.config["model"] for r in self.runs}
        return [] if spec is None else [m for m in spec.choices if m not in used]

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
    seeds = [o.partition("=")[2] for o in view.overrides if o.startswith("trainer.seed=")]
    seed = int(seeds[-1]) if seeds and seeds[-1].isdigit() else None
    status = view.status.upper()
    return KnownRun(view.run_id, view.run_label or view.run_id, status, config, metric, seed, view.pruned)


def _runs(n: int) -> str:
    return f"{n} run" if n == 1 else f"{n} runs"


def _bucket(spec: ParamSpec, value: Value) -> str:
    """A value's name in the summary: the value itself, or the third of the float range it lies in."""
    if not spec.is_float:
        return fmt_value(value)
    third = min(int(spec.position(value) * 3), 2)
    low, high = (spec.at(i / 3) for i in (third, third + 1))
    return f"{short_num(low)}..{short_num(high)}"
