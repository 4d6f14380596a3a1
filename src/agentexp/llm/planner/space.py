"""The planner's search space: searched parameters, Optuna distributions, Hydra overrides in and out."""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterator
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

Value = str | bool | int | float | None
Config = dict[str, Value]

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


def fmt_value(value: Value) -> str:
    """A value as Hydra override text (`true`, `null`, `0.0003`)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return repr(value) if isinstance(value, float) else str(value)


def short_num(x: float) -> str:
    """A float for a run label: 0.0003 -> 3e-4, 0.012 -> 1.2e-2."""
    mantissa, exponent = f"{x:.1e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def _short_key(key: str) -> str:
    """An abbreviation of a dotted key for run labels: optim.weight_decay -> wd."""
    words = key.rsplit(".", 1)[-1].split("_")
    return words[0][:3] if len(words) == 1 else "".join(w[0] for w in words if w)


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
                if fmt_value(choice) == text or str(choice) == text:
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
        return [f"{key}={fmt_value(config[key])}" for key in self.override_order]

    def describe(self, config: Config) -> str:
        return ", ".join(f"{key}={fmt_value(config[key])}" for key in self.params)

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
                parts.append(f"{_short_key(key)}{short_num(float(value))}")
            else:
                parts.append(fmt_value(value) if "." not in key else f"{_short_key(key)}{fmt_value(value)}")
        return re.sub(r"[^A-Za-z0-9._-]", "_", "-".join(parts))[:80]
