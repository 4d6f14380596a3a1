"""Pydantic contracts for what the worker and mentor LLMs may answer, and their JSON schema."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_PATCH_CHARS = 100_000
"""A patch longer than this is not a recipe change (the gate's line cap is tighter still)."""
MAX_NEW_TODOS = 2
"""TODOs a single decision may add; extra items are cut, not rejected."""

StrategyDimension = Literal[
    "augmentation", "preprocessing", "data_sampling", "loss", "model_arch", "optimization", "evaluation"
]
RunLabel = Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{3,80}$")]
Todo = Annotated[str, Field(min_length=1, max_length=300)]
Override = Annotated[str, Field(min_length=1, max_length=200)]
ModelName = Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,100}$")]


class Action(StrEnum):
    TRAIN = "train"
    WAIT = "wait"
    ANALYZE = "analyze"
    FINISH = "finish"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class Housekeeping(_Strict):
    todo_new: list[Todo] = Field([], max_length=MAX_NEW_TODOS)
    """New TODOs for the shared queue (at most 2 are kept)."""
    notes_update: str | None = Field(None, max_length=2000)
    """Text appended to the workpad's Notes section."""
    data_exploration_update: str | None = Field(None, max_length=2000)
    """Text appended to the workpad's Data Exploration section."""
    resolve_shared_todo_ids: list[int] = Field([], max_length=10)
    """Ids of shared TODOs this decision resolves."""

    @field_validator("todo_new", mode="before")
    @classmethod
    def _cut_todos(cls, value: Any) -> Any:
        return value[:MAX_NEW_TODOS] if isinstance(value, list) else value


class WorkerDecision(_Strict):
    action: Action
    """train: launch one run; wait: monitor; analyze: update notes only; finish: stop experimenting."""
    rationale: str = Field(min_length=1, max_length=2000)
    """Why this is the best next step, citing runs and metrics."""
    run_label: RunLabel | None = None
    """Specific name of the training run (letters, digits, '.', '_', '-'); required for train."""
    overrides: list[Override] = Field([], max_length=20)
    """Hydra overrides for the trainer, e.g. 'optim.lr=3e-4'; only used for train."""
    monitor_seconds: int = Field(0, ge=0)
    """train: seconds to watch the running jobs after the launch (clamped to the loop's bounds); a watch
    ends as soon as a job ends, and a wait watches until one does, up to the loop's bound."""
    strategy_dimension: StrategyDimension | None = None
    """What kind of change this is; required for train."""
    housekeeping: Housekeeping = Housekeeping()
    """Notes, data exploration and TODO updates."""
    patch: str | None = Field(None, max_length=MAX_PATCH_CHARS)
    """train only: a unified diff (git apply format) against the incumbent's editable recipe files."""

    @field_validator("monitor_seconds", mode="before")
    @classmethod
    def _clamp_negative(cls, value: Any) -> Any:
        return 0 if isinstance(value, int) and not isinstance(value, bool) and value < 0 else value

    @model_validator(mode="after")
    def _train_is_specific(self) -> WorkerDecision:
        if self.action == Action.TRAIN and self.run_label is None:
            raise ValueError("a train decision needs a run_label")
        if self.action == Action.TRAIN and self.strategy_dimension is None:
            raise ValueError("a train decision needs a strategy_dimension")
        if self.patch is not None and self.action != Action.TRAIN:
            raise ValueError("only a train decision may carry a patch")
        return self


class MentorReview(_Strict):
    verdict: Literal["on_track", "off_track"]
    """on_track lets the worker continue; off_track challenges it."""
    rationale: str = Field(min_length=1, max_length=2000)
    """The evidence behind the verdict."""
    critical_question: str | None = Field(None, max_length=500)
    """At most one question the worker must answer."""
    replacement: WorkerDecision | None = None
    """A decision to run instead of the worker's, when off_track."""
    todo: str | None = Field(None, max_length=300)
    """At most one TODO for the shared queue."""
    architecture_alternatives: list[ModelName] = Field([], max_length=3)
    """Concrete timm model names to try when the metric stagnates."""


def json_schema(model: type[BaseModel]) -> dict:
    """The JSON schema of a contract, as handed to the LLM backends."""
    return model.model_json_schema()
